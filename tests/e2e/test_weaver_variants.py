"""The real ``weaver`` CLI trains the ParT family with every refinement at once for one epoch on generated Pythia
jets; the slow tests cover every option alone, prediction and ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import uproot

from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import run_weaver, weaver_batch
from weaver_ext.checkpoint import load_checkpoint

DATA_CONFIG = JETCLASS_CONFIGS / "JetClass_kin.yaml"
TINY = {"num_layers": "2", "num_cls_layers": "1", "embed_dims": "(32,32)", "pair_embed_dims": "(16,)",
        "num_heads": "2"}
# every refinement at once, so one default run exercises them all in weaver's training loop
ALL_OPTIONS = {"attention": "'differential'", "value_residual": "True", "num_registers": "2", "attn_knn": "8",
               "pos_encoding": "'fourier'", "grad_checkpoint": "True", "layer_scale_init": "1e-3",
               "ffn_activation": "'swiglu'", "head": "'latent'", "head_queries": "2"}
SINGLE_OPTIONS = [
    {"attn_window": "4"}, {"pos_encoding": "'sequence'"}, {"pos_encoding": "'eta_phi'"}, {"latent_tokens": "4"},
    {"pair_bias": "False"}, {"num_layers": "0", "latent_tokens": "4", "latent_layers": "2"},
]


def _opts(opts: dict[str, str]) -> list[str]:
    return [a for k, v in opts.items() for a in ("-o", k, v)]


def _train(jet_files: list[Path], run: Path, network: str, options: dict[str, str]) -> Path:
    run_weaver(
        ["--data-train", *jet_files, "--data-config", DATA_CONFIG, "--network-config", REPO_ROOT / "networks" / network,
         *_opts(options), "--model-prefix", run / "net", "--num-epochs", "1", "--batch-size", "32",
         "--samples-per-epoch", "96", "--samples-per-epoch-val", "32", "--start-lr", "1e-3", "--optimizer", "adamw",
         "--gpus", "", "--num-workers", "0", "--fetch-step", "1", "--log-file", run / "train.log"],
        cwd=run,
    )
    return run


def _check_trained(run: Path) -> None:
    """Checks what weaver guarantees: an epoch state always; a best-epoch state only if validation beat 0."""
    assert (run / "net_epoch-0_state.pt").is_file()
    log = (run / "train.log").read_text()
    assert "Epoch #0 training" in log and "Current validation metric" in log
    metric = float(log.split("Current validation metric: ")[1].split(" ")[0])
    assert (run / "net_best_epoch_state.pt").is_file() == (metric > 0)
    loss = float(log.split("Train AvgLoss: ")[1].split(",")[0])
    assert np.isfinite(loss)


def _reload(network: str, options: dict[str, str], checkpoint: Path) -> tuple[torch.nn.Module, dict]:
    module = import_network_config(REPO_ROOT / "networks" / network, name=f"_e2e_{network[:-3]}")
    data_config = load_data_config(DATA_CONFIG)
    parsed = {k: eval(v) for k, v in options.items()}  # noqa: S307 - literals written above
    model, info = module.get_model(data_config, for_inference=True, **parsed)
    return load_checkpoint(model, checkpoint).eval(), info


# every network config alone: tests/e2e/test_weaver_every_network.py; here all refinements at once
@pytest.mark.parametrize("network,options", [("transformer.py", {**TINY, **ALL_OPTIONS})],
                         ids=["transformer-all-options"])
def test_weaver_trains_variant(jet_files, tmp_path, network, options):
    run = _train(jet_files, tmp_path, network, options)
    _check_trained(run)
    model, info = _reload(network, options, run / "net_epoch-0_state.pt")
    batch = weaver_batch(jet_files[:2], DATA_CONFIG, max_jets=16)
    with torch.inference_mode():
        scores = model(*(batch[k] for k in info["input_names"]))
    assert scores.shape == (16, 10) and torch.allclose(scores.sum(1), torch.ones(16), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("options", SINGLE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_weaver_trains_each_transformer_option(jet_files, tmp_path, options):
    _check_trained(_train(jet_files, tmp_path, "transformer.py", {**TINY, **options}))


@pytest.mark.slow
# every network config alone: tests/e2e/test_weaver_every_network.py; here all refinements at once
@pytest.mark.parametrize("network,options", [("transformer.py", {**TINY, **ALL_OPTIONS})],
                         ids=["transformer-all-options"])
def test_weaver_predicts_and_exports(jet_files, tmp_path, network, options):
    run = _train(jet_files, tmp_path, network, options)
    out = run / "pred.root"
    common = ["--data-config", DATA_CONFIG, "--network-config", REPO_ROOT / "networks" / network, *_opts(options),
              "--model-prefix", run / "net_epoch-0_state.pt"]
    run_weaver(["--predict", "--data-test", *jet_files, *common, "--gpus", "", "--num-workers", "0",
                "--batch-size", "64", "--predict-output", out], cwd=run)
    events = uproot.open(out)["Events"].arrays(library="np")
    scores = np.stack([v for k, v in events.items() if k.startswith("score_")], axis=1)
    assert scores.shape == (sum(uproot.open(f)["tree"].num_entries for f in jet_files), 10)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)

    import onnxruntime as ort

    run_weaver([*common, "--export-onnx", run / "model.onnx"], cwd=run)
    model, info = _reload(network, options, run / "net_epoch-0_state.pt")
    batch = weaver_batch(jet_files[:3], DATA_CONFIG, max_jets=32)
    inputs = {k: batch[k] for k in info["input_names"]}
    with torch.inference_mode():
        expected = model(*inputs.values()).numpy()
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: inputs[i.name].numpy() for i in session.get_inputs()})[0]
    # onnxruntime (MLAS) and PyTorch (oneDNN) sum in different orders; seen ~1e-6 on AVX2 and AVX-512 kernels
    assert np.abs(got - expected).max() <= 1e-4
