"""The real ``weaver`` CLI with ``-o part_version 3`` and ``3.6``: one epoch of training, ``--predict``, and
``--export-onnx`` run by onnxruntime at batch 1 and batch 64 against PyTorch (1e-4: onnxruntime's MLAS and
PyTorch's oneDNN sum in different orders; ~1e-6 is typical)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import uproot

from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import run_weaver, weaver_batch
from weaver_ext.checkpoint import load_checkpoint

NETWORK = REPO_ROOT / "networks" / "part.py"
DATA_CONFIG = JETCLASS_CONFIGS / "JetClass_kin.yaml"
TINY = {"num_layers": 2, "embed_dims": (32, 32), "pair_embed_dims": (16,), "num_heads": 2}


def _opts(options: dict) -> list[str]:
    return [a for k, v in options.items() for a in ("-o", k, repr(v))]


@pytest.mark.parametrize("version", [3, 3.6], ids=["v3", "v3.6"])
def test_weaver_trains_predicts_and_exports_a_version(version, jet_files, tmp_path):
    options = {**TINY, "part_version": version}
    common = ["--data-config", DATA_CONFIG, "--network-config", NETWORK, *_opts(options)]
    run_weaver(["--data-train", *jet_files[:-1], *common, "--model-prefix", tmp_path / "net", "--num-epochs", "1",
                "--batch-size", "32", "--samples-per-epoch", "128", "--samples-per-epoch-val", "32",
                "--start-lr", "1e-3", "--optimizer", "adamw", "--gpus", "", "--num-workers", "0",
                "--fetch-step", "1", "--log-file", tmp_path / "train.log"], cwd=tmp_path)
    state = tmp_path / "net_epoch-0_state.pt"
    assert np.isfinite(float((tmp_path / "train.log").read_text().split("Train AvgLoss: ")[1].split(",")[0]))
    run_weaver(["--predict", "--data-test", jet_files[-1], *common, "--model-prefix", state, "--gpus", "",
                "--num-workers", "0", "--batch-size", "64", "--predict-output", tmp_path / "pred.root"], cwd=tmp_path)
    events = uproot.open(tmp_path / "pred.root")["Events"].arrays(library="np")
    scores = np.stack([events[k] for k in events if k.startswith("score_")], axis=1)
    assert scores.shape[1] == 10 and np.allclose(scores.sum(1), 1.0, atol=1e-5)

    onnx_path = tmp_path / "part.onnx"
    run_weaver([*common, "--model-prefix", state, "--export-onnx", onnx_path], cwd=tmp_path)
    network = import_network_config(NETWORK, name=f"_e2e_version_{version}")
    model, info = network.get_model(load_data_config(DATA_CONFIG), for_inference=True, **options)
    load_checkpoint(model, state).eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = weaver_batch(jet_files, DATA_CONFIG, max_jets=64)
    for size in (1, 64):
        inputs = {k: batch[k][:size] for k in info["input_names"]}
        with torch.inference_mode():
            expected = model(*inputs.values()).numpy()
        got = session.run(None, {i.name: inputs[i.name].numpy() for i in session.get_inputs()})[0]
        assert got.shape == expected.shape == (size, 10)
        assert np.abs(got - expected).max() <= 1e-4
