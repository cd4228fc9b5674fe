"""The fast path's ONNX graph (``-o inference_path 'bucketed'`` at export) equals PyTorch within 1e-5.

The graph is exported exactly as ``weaver --export-onnx`` exports (``profiling.bench_onnx.export_like_weaver``:
TorchScript exporter, opset 15, traced on ones of length 128) and run in onnxruntime at other batch sizes and lengths
(the axes are dynamic). Tolerance 1e-5 on the softmax: onnxruntime's MLAS and PyTorch's oneDNN sum in different
orders (seen up to 1.3e-6).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from profiling.bench import paired_part
from profiling.bench_onnx import INPUT_NAMES, export_like_weaver
from tests.conftest import JETCLASS_CONFIGS
from tests.helpers import weaver_batch
from weaver_ext.onnx_buckets import bucket_slices, predict_bucketed, trim_to_longest
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config

TOL = 1e-5
SMALL = {"num_layers": 2, "num_cls_layers": 1, "embed_dims": (64, 64), "pair_embed_dims": (32, 32), "num_heads": 4}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, jet_files):
    """Our small ParT (random weights, non-trivial BatchNorm statistics) and its fast-path ONNX session."""
    torch.manual_seed(0)
    model = ParticleTransformer(part_config(input_dim=17, num_classes=10, for_inference=True,
                                            inference_path="bucketed", **SMALL)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    path = export_like_weaver(model, 17, tmp_path_factory.mktemp("onnx") / "fast.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / "JetClass_full.yaml", max_jets=200)
    arrays = {k: batch[k].numpy() for k in INPUT_NAMES}
    return model, path, session, arrays


def _standard(model: ParticleTransformer, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Our standard eval forward (padded, no folding) as the reference."""
    standard = ParticleTransformer(part_config(input_dim=17, num_classes=10, for_inference=True, **SMALL)).eval()
    standard.load_state_dict(model.state_dict())
    with torch.inference_mode():
        return standard(*(torch.from_numpy(arrays[k]) for k in INPUT_NAMES)).numpy()


def test_graph_has_the_folded_pair_embedding_on_real_pairs(exported):
    _, path, session, _ = exported
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "NonZero" in ops  # the real i <= j pairs are selected, not all L x L
    assert "Conv" not in ops  # the pair embedding's 1x1 convolutions are folded into matrix products
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    assert session.get_inputs()[0].shape == ["N", 17, "n_pf"]


@pytest.mark.parametrize("bucket_size", [32, 7, 1, 0], ids=["bucket32", "bucket7", "batch1", "one-bucket"])
def test_bucketed_onnx_predictions_match_pytorch(exported, bucket_size):
    model, _, session, arrays = exported
    expected = _standard(model, arrays)
    got = predict_bucketed(session, arrays, bucket_size=bucket_size)
    assert got.shape == expected.shape == (len(arrays["pf_mask"]), 10)
    assert np.abs(got - expected).max() <= TOL


def test_a_bucket_with_shorter_jets_inside_matches_pytorch(exported):
    """Within a bucket jets are shorter than its length: padding inside the graph's input is masked exactly."""
    model, _, session, arrays = exported
    mixed = trim_to_longest({k: v[:48] for k, v in arrays.items()})
    lengths = mixed["pf_mask"].sum(axis=(1, 2))
    assert lengths.min() < lengths.max() == mixed["pf_mask"].shape[-1]
    got = session.run(None, {k: mixed[k] for k in INPUT_NAMES})[0]
    assert np.abs(got - _standard(model, {k: v[:48] for k, v in arrays.items()})).max() <= TOL


def test_bucket_slices_sort_and_trim():
    mask = np.zeros((5, 1, 10), dtype=np.float32)
    for row, n in enumerate([7, 0, 3, 10, 3]):
        mask[row, 0, :n] = 1
    slices = bucket_slices(mask, 2)  # ceil(5 / 2) = 3 buckets; sorted lengths 0 3 3 7 10
    assert np.concatenate([idx for idx, _ in slices]).tolist() == [1, 2, 4, 0, 3]
    assert [length for _, length in slices] == [max(mask[idx].sum(axis=(1, 2)).max(), 1) for idx, _ in slices]
    assert sum(len(idx) * length for idx, length in slices) == 27  # fewest slots: (0 -> 1)(3 3)(7 10)
    assert [(idx.tolist(), length) for idx, length in bucket_slices(mask, 0)] == [([1, 2, 4, 0, 3], 10)]


def test_missing_input_is_one_line(exported):
    _, _, session, arrays = exported
    with pytest.raises(ValueError, match=r"needs inputs \['pf_vectors'\]"):
        predict_bucketed(session, {k: v for k, v in arrays.items() if k != "pf_vectors"})


def test_weaver_core_export_matches_ours_with_the_same_weights(tmp_path, jet_files):
    """The benchmark's baseline graph (weaver-core's ParT, exported the same way) gives the same softmax."""
    torch.manual_seed(1)
    reference, ours = paired_part(17, 10, part_version=1.0, for_inference=True,
                                  options={"inference_path": "bucketed"})  # paper size
    sessions = {name: ort.InferenceSession(str(export_like_weaver(m, 17, tmp_path / f"{name}.onnx")),
                                           providers=["CPUExecutionProvider"])
                for name, m in (("weaver", reference), ("ours", ours))}
    batch = weaver_batch(jet_files[:4], JETCLASS_CONFIGS / "JetClass_full.yaml", max_jets=64)
    arrays = trim_to_longest({k: batch[k].numpy() for k in INPUT_NAMES})
    ref = sessions["weaver"].run(None, {i.name: arrays[i.name] for i in sessions["weaver"].get_inputs()})[0]
    got = predict_bucketed(sessions["ours"], arrays, bucket_size=16)
    assert np.abs(got - ref).max() <= TOL


def test_onnx_benchmark_runs_and_its_graphs_agree(jet_files):
    """``profiling.bench --onnx`` on a small sample: both exports run, ours equals our PyTorch forward and
    weaver-core's graph within 1e-5, and every number the report prints is there."""
    from profiling.bench_onnx import OnnxBenchConfig, format_onnx_result, run_onnx_bench

    cfg = OnnxBenchConfig(files=tuple(map(str, jet_files)), data_config=str(JETCLASS_CONFIGS / "JetClass_full.yaml"),
                          batch_size=32, num_batches=2, repeats=1, latency_jets=3)
    result = run_onnx_bench(cfg)
    assert result["jets"] == 64
    assert result["max_abs_diff_vs_torch"] <= TOL and result["max_abs_diff_softmax"] <= TOL
    assert result["weaver_jets_per_s"] > 0 and result["ours_jets_per_s"] > 0 and result["ours_batch1_ms"] > 0
    assert "batch 1 latency" in format_onnx_result(result)
