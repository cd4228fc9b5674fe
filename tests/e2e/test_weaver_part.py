"""The real ``weaver`` CLI trains, predicts and exports networks/part.py on generated Pythia jets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import uproot

from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import run_weaver, weaver_batch
from weaver_ext.checkpoint import load_checkpoint
from weaver_ext.onnx_buckets import predict_bucketed

NETWORK = REPO_ROOT / "networks" / "part.py"
DATA_CONFIG = JETCLASS_CONFIGS / "JetClass_kin.yaml"
TINY_OPTS = {"num_layers": "1", "num_cls_layers": "1", "embed_dims": "(32,32)", "pair_embed_dims": "(16,)",
             "num_heads": "2"}
LABELS = ["QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl"]


def _opts(opts: dict[str, str]) -> list[str]:
    return [a for k, v in opts.items() for a in ("-o", k, v)]


@pytest.fixture(scope="module")
def trained(jet_files, tmp_path_factory):
    """One epoch of real weaver training on the generated files; returns the run directory."""
    run = tmp_path_factory.mktemp("part_run")
    run_weaver(
        ["--data-train", *jet_files, "--data-config", DATA_CONFIG, "--network-config", NETWORK, *_opts(TINY_OPTS),
         "--model-prefix", run / "net", "--num-epochs", "1", "--batch-size", "32", "--start-lr", "1e-3",
         "--optimizer", "adamw", "--gpus", "", "--num-workers", "0", "--fetch-step", "1",
         "--log-file", run / "train.log"],
        cwd=run,
    )
    return run


def test_training_writes_checkpoints(trained):
    """weaver always writes the epoch state; the best-epoch state only when validation beats 0 (not certain in a
    one-epoch run, so the other tests read the epoch state)."""
    assert (trained / "net_epoch-0_state.pt").is_file()
    log = (trained / "train.log").read_text()
    assert "Epoch #0 training" in log and "Current validation metric" in log
    metric = float(log.split("Current validation metric: ")[1].split(" ")[0])
    assert (trained / "net_best_epoch_state.pt").is_file() == (metric > 0)


def test_predict_writes_a_score_branch_per_class(trained, jet_files):
    out = trained / "pred.root"
    run_weaver(
        ["--predict", "--data-test", *jet_files, "--data-config", DATA_CONFIG, "--network-config", NETWORK,
         *_opts(TINY_OPTS), "--model-prefix", trained / "net_epoch-0_state.pt", "--gpus", "", "--num-workers",
         "0", "--batch-size", "64", "--predict-output", out],
        cwd=trained,
    )
    events = uproot.open(out)["Events"].arrays(library="np")
    scores = np.stack([events[f"score_label_{c}"] for c in LABELS], axis=1)
    n_jets = sum(uproot.open(f)["tree"].num_entries for f in jet_files)
    assert scores.shape == (n_jets, 10)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert set(np.unique(events["_label_"])) == set(range(10))  # every class present in the generated sample


def test_export_onnx_matches_pytorch(trained, jet_files):
    onnx_path = trained / "part.onnx"
    run_weaver(
        ["--data-config", DATA_CONFIG, "--network-config", NETWORK, *_opts(TINY_OPTS), "--model-prefix",
         trained / "net_epoch-0_state.pt", "--export-onnx", onnx_path],
        cwd=trained,
    )
    network = import_network_config(NETWORK, name="_e2e_part_network")
    data_config = load_data_config(DATA_CONFIG)
    options = {k: eval(v) for k, v in TINY_OPTS.items()}  # noqa: S307 - literals written above
    model, info = network.get_model(data_config, for_inference=True, **options)
    load_checkpoint(model, trained / "net_epoch-0_state.pt").eval()

    batch = weaver_batch(jet_files[:3], DATA_CONFIG, max_jets=48)
    inputs = {k: batch[k] for k in info["input_names"]}
    with torch.inference_mode():
        expected = model(*inputs.values()).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # the exporter drops inputs the graph does not use (ParT ignores pf_points)
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    assert set(feed) <= set(inputs) and "pf_features" in feed
    got = session.run(None, feed)[0]
    assert got.shape == expected.shape == (len(batch["_label_"]), 10)
    # onnxruntime (MLAS) and PyTorch (oneDNN) sum in different orders; seen ~1e-6 on AVX2 and AVX-512 kernels
    assert np.abs(got - expected).max() <= 1e-4


def test_export_onnx_of_the_fast_path_matches_pytorch(trained, jet_files):
    """weaver --export-onnx -o inference_path 'bucketed' writes the fast path's graph (folded pair embedding on real
    pairs, dynamic length); run per length bucket by the documented caller it equals the PyTorch model within 1e-5."""
    onnx_path = trained / "part_fast.onnx"
    opts = {**TINY_OPTS, "inference_path": "'bucketed'"}
    run_weaver(
        ["--data-config", DATA_CONFIG, "--network-config", NETWORK, *_opts(opts), "--model-prefix",
         trained / "net_epoch-0_state.pt", "--export-onnx", onnx_path],
        cwd=trained,
    )
    network = import_network_config(NETWORK, name="_e2e_part_network")
    model, info = network.get_model(load_data_config(DATA_CONFIG), for_inference=True,
                                    **{k: eval(v) for k, v in TINY_OPTS.items()})  # noqa: S307 - literals above
    load_checkpoint(model, trained / "net_epoch-0_state.pt").eval()
    batch = weaver_batch(jet_files, DATA_CONFIG, max_jets=120)
    inputs = {k: batch[k] for k in info["input_names"]}
    with torch.inference_mode():
        expected = model(*inputs.values()).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert "NonZero" in {node.op_type for node in onnx.load(str(onnx_path)).graph.node}  # real pairs only
    got = predict_bucketed(session, {k: v.numpy() for k, v in inputs.items()}, bucket_size=16)
    assert np.abs(got - expected).max() <= 1e-5


def _predict_scores(trained, jet_files, name: str, opts: dict[str, str]) -> np.ndarray:
    out = trained / f"pred_{name}.root"
    run_weaver(
        ["--predict", "--data-test", *jet_files, "--data-config", DATA_CONFIG, "--network-config", NETWORK,
         *_opts({**TINY_OPTS, **opts}), "--model-prefix", trained / "net_epoch-0_state.pt", "--gpus", "",
         "--num-workers", "0", "--batch-size", "64", "--predict-output", out],
        cwd=trained,
    )
    events = uproot.open(out)["Events"].arrays(library="np")
    return np.stack([events[f"score_label_{c}"] for c in LABELS], axis=1)


def test_bucketed_predict_matches_standard_predict(trained, jet_files):
    """weaver --predict through the fast inference path (-o inference_path 'bucketed') gives the same scores."""
    standard = _predict_scores(trained, jet_files, "standard", {"inference_path": "'standard'"})
    bucketed = _predict_scores(trained, jet_files, "bucketed", {"inference_path": "'bucketed'"})
    assert standard.shape == bucketed.shape
    assert np.abs(standard - bucketed).max() <= 1e-5


@pytest.mark.slow
def test_compiled_bucketed_predict_matches_standard_predict(trained, jet_files):
    """-o inference_compile True: the same scores through torch.compile with frozen weights (fp32, 1e-5)."""
    standard = _predict_scores(trained, jet_files, "standard", {"inference_path": "'standard'"})
    compiled = _predict_scores(trained, jet_files, "compiled",
                               {"inference_path": "'bucketed'", "inference_compile": "True"})
    assert np.abs(standard - compiled).max() <= 1e-5
