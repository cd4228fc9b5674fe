"""``python -m profiling.bench --onnx``: onnxruntime on our fast-path export against onnxruntime on weaver-core's.

Both graphs are exported as ``weaver --export-onnx`` exports (``for_inference=True``, TorchScript exporter, opset 15,
batch and length axes dynamic, traced on ones of shape (2, C, 128)) from the same weights, and run in onnxruntime on
the same real jets with the same thread count:
- weaver-core's graph gets each batch cut to its longest jet (what its eager trimmer does, and its best case);
- ours gets the documented calling convention (``weaver_ext.onnx_buckets.predict_bucketed``): jets sorted by
  multiplicity, buckets of ``bucket_size``, each cut to its own longest jet.

Prints jets/s at the batch size (with the ratio), the per-jet latency at batch 1 (each jet alone, cut to its own
length: the online case), and the agreement of the two graphs' softmax outputs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from profiling.bench import BenchInputs, cpu_kernels, paired_part, real_batches, speed_summary
from weaver_ext.onnx_buckets import predict_bucketed, trim_to_longest

INPUT_NAMES = ("pf_features", "pf_vectors", "pf_mask")
OPSET = 15  # weaver's --onnx-opset default


@dataclass(frozen=True)
class OnnxBenchConfig(BenchInputs):
    """onnxruntime on both exports: throughput at the batch size and the batch-1 latency."""

    latency_jets: int = 256  # jets timed one at a time for the batch-1 latency
    weights: str | None = None


def export_like_weaver(model: torch.nn.Module, input_dim: int, path: Path) -> Path:
    """``torch.onnx.export`` with the arguments ``weaver --export-onnx`` uses (weaver-core 0.5.3's train.py)."""
    sample = (torch.ones(2, input_dim, 128), torch.ones(2, 4, 128), torch.ones(2, 1, 128))
    axes = {name: {0: "N", 2: "n_pf"} for name in INPUT_NAMES} | {"softmax": {0: "N"}}
    torch.onnx.export(model.eval(), sample, str(path), input_names=list(INPUT_NAMES), output_names=["softmax"],
                      dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return path


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: inputs[i.name] for i in session.get_inputs()}


def run_onnx_bench(cfg: OnnxBenchConfig) -> dict:
    """Export both models, then alternate timed onnxruntime passes over the same batches; batch-1 latencies last."""
    torch.set_num_threads(cfg.threads)
    batches, input_dim, num_classes = real_batches(cfg.files, cfg.data_config, batch_size=cfg.batch_size,
                                                   num_batches=cfg.num_batches, seed=cfg.seed,
                                                   device=torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    reference, ours = paired_part(input_dim, num_classes, part_version=cfg.part_version, weights=cfg.weights,
                                  for_inference=True, options={"inference_path": "bucketed"},
                                  where="profiling.bench --onnx")
    with tempfile.TemporaryDirectory(prefix="weaverlab_onnx_") as tmp:
        sessions = {"weaver": _session(export_like_weaver(reference, input_dim, Path(tmp) / "weaver_core.onnx"),
                                       cfg.threads),
                    "ours": _session(export_like_weaver(ours, input_dim, Path(tmp) / "ours.onnx"), cfg.threads)}
    arrays = [dict(zip(INPUT_NAMES, (t.numpy() for t in batch), strict=True)) for batch in batches]
    runners = {
        "weaver": lambda a: sessions["weaver"].run(None, _feeds(sessions["weaver"], trim_to_longest(a)))[0],
        "ours": lambda a: predict_bucketed(sessions["ours"], a, bucket_size=cfg.bucket_size),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, list[np.ndarray]] = {}
    for run in runners.values():  # warm-up
        run(arrays[0])
    for rep in range(cfg.repeats):
        for name in (("weaver", "ours") if rep % 2 == 0 else ("ours", "weaver")):
            start = time.perf_counter()
            outputs[name] = [runners[name](a) for a in arrays]
            times[name].append(time.perf_counter() - start)
    with torch.inference_mode():
        torch_ours = torch.cat([ours.eval()(*batch) for batch in batches]).numpy()
    ref_out, our_out = np.concatenate(outputs["weaver"]), np.concatenate(outputs["ours"])
    result = speed_summary(cfg, torch.device("cpu"), [a["pf_mask"] for a in arrays], times)
    result["config"]["device"] = "cpu"  # onnxruntime's CPU provider
    result |= {
        "onnxruntime": _ort_version(),
        "max_abs_diff_softmax": float(np.abs(our_out - ref_out).max()),
        "max_abs_diff_vs_torch": float(np.abs(our_out - torch_ours).max()),
        "argmax_agreement": float((our_out.argmax(1) == ref_out.argmax(1)).mean()),
    }
    result.update(_batch1_latency(cfg, sessions, arrays))
    return result


def _batch1_latency(cfg: OnnxBenchConfig, sessions: dict, arrays: list[dict[str, np.ndarray]]) -> dict:
    """Each jet alone, cut to its own length (both graphs see the same input), alternating graphs per jet."""
    jets = []
    for a in arrays:
        for row in range(len(a["pf_mask"])):
            jets.append(trim_to_longest({k: v[row:row + 1] for k, v in a.items()}))
    jets = jets[:cfg.latency_jets]
    latencies: dict[str, list[float]] = {"weaver": [], "ours": []}
    for session in sessions.values():  # warm-up
        session.run(None, _feeds(session, jets[0]))
    for jet in jets:
        for name, session in sessions.items():
            feed = _feeds(session, jet)
            start = time.perf_counter()
            session.run(None, feed)
            latencies[name].append(time.perf_counter() - start)
    return {f"{name}_batch1_ms": 1e3 * statistics.median(values) for name, values in latencies.items()} | {
        f"{name}_batch1_mean_ms": 1e3 * statistics.fmean(values) for name, values in latencies.items()}


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def format_onnx_result(r: dict) -> str:
    c = r["config"]
    return "\n".join([
        f"device: {r['device']}{cpu_kernels(r)}, onnxruntime {r['onnxruntime']}, threads={c['threads']}, "
        f"batch={c['batch_size']}, jets={r['jets']} (multiplicity mean {r['multiplicity_mean']:.1f}, "
        f"max {r['multiplicity_max']:.0f})",
        f"weaver-core ParT ONNX : {r['weaver_jets_per_s']:8.1f} jets/s   (each batch cut to its longest jet)",
        f"weaver_ext fast ONNX  : {r['ours_jets_per_s']:8.1f} jets/s   (buckets of {c['bucket_size']} by multiplicity)",
        f"ratio                 : {r['ratio']:8.2f}",
        f"batch 1 latency       : weaver-core {r['weaver_batch1_ms']:.2f} ms, ours {r['ours_batch1_ms']:.2f} ms "
        f"per jet (median of {c['latency_jets']} jets; means {r['weaver_batch1_mean_ms']:.2f} / "
        f"{r['ours_batch1_mean_ms']:.2f} ms)",
        f"max |d softmax|       : {r['max_abs_diff_softmax']:.2e} vs weaver-core's graph, "
        f"{r['max_abs_diff_vs_torch']:.2e} vs our PyTorch forward; argmax agreement {r['argmax_agreement']:.4f}",
    ])
