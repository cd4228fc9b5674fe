"""The real ``weaver`` CLI trains, resumes, predicts and exports networks/dsa_part.py (DSA-ParT)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
import uproot

from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import run_weaver, weaver_batch
from weaver_ext.checkpoint import load_checkpoint, read_state_dict

NETWORK = REPO_ROOT / "networks" / "dsa_part.py"
DATA_CONFIG = JETCLASS_CONFIGS / "JetClass_kin.yaml"
TINY_OPTS = {"num_layers": "2", "num_cls_layers": "1", "embed_dims": "(16,16)", "pair_embed_dims": "(8,)",
             "num_heads": "2"}
# indexer mode, schedule 0.5 -> 0.25 over 6 steps; distillation off so only the sparsity term trains the indexer
INDEXER_OPTS = {**TINY_OPTS, "dsa_enabled": "True", "dsa_mode": "'indexer'", "sparsity_ratio": "0.5",
                "target_sparsity": "0.25", "sparsity_schedule": "'linear'", "sparsity_steps": "6",
                "sparsity_weight": "1.0", "entropy_weight": "0.1", "distill_weight": "0.0"}
TOPK_OPTS = {**TINY_OPTS, "dsa_enabled": "True", "dsa_mode": "'topk'", "sparsity_ratio": "0.25"}
STEPS_PER_EPOCH = 2


def _opts(opts: dict[str, str]) -> list[str]:
    return [a for k, v in opts.items() for a in ("-o", k, v)]


def _train_args(jet_files, run, *, epochs: int) -> list[object]:
    return ["--data-train", *jet_files, "--data-config", DATA_CONFIG, "--network-config", NETWORK,
            *_opts(INDEXER_OPTS), "--model-prefix", run / "net", "--num-epochs", str(epochs), "--steps-per-epoch",
            str(STEPS_PER_EPOCH), "--batch-size", "16", "--start-lr", "1e-2", "--optimizer", "adamw", "--gpus", "",
            "--num-workers", "0", "--fetch-step", "1", "--log-file", run / "train.log"]


def _dsa_lines(log: str) -> list[dict[str, float]]:
    """The per-epoch 'DSA epoch N: key=value, ...' lines of a weaver log."""
    out = []
    for line in re.findall(r"DSA epoch \d+: (.*)", log):
        out.append({k: float(v) for k, v in (item.split("=") for item in line.strip().split(", "))})
    return out


@pytest.fixture(scope="module")
def trained(jet_files, tmp_path_factory):
    """Two epochs of real weaver training (indexer mode, tensorboard on); returns the run directory."""
    run = tmp_path_factory.mktemp("dsa_run")
    run_weaver([*_train_args(jet_files, run, epochs=2), "--tensorboard", "_dsa"], cwd=run)
    return run


def test_training_logs_dsa_statistics_and_aux_loss(trained):
    stats = _dsa_lines((trained / "train.log").read_text())
    assert len(stats) == 2
    for epoch, s in enumerate(stats):
        assert s["dsa/step"] == STEPS_PER_EPOCH * (epoch + 1)
        assert s["dsa/aux_loss"] > 0 and np.isfinite(s["dsa/task_loss"])
        for layer in (0, 1):
            assert 0 < s[f"dsa/layer{layer}/kept_fraction"] <= 0.5 + 1e-6
            assert 0 < s[f"dsa/layer{layer}/mass_kept"] <= 1
            assert s[f"dsa/layer{layer}/entropy"] > 0
    assert stats[1]["dsa/kept_fraction_schedule"] == pytest.approx(0.5 - 0.25 * 4 / 6, rel=1e-5)


def test_sparsity_term_gradient_trains_the_indexer(trained):
    """With distillation off, only the sparsity regulariser reaches the indexer: its weights must move."""
    before = torch.load(trained / "net_epoch-0_state.pt", weights_only=True)
    after = torch.load(trained / "net_epoch-1_state.pt", weights_only=True)
    keys = [k for k in after if ".indexer." in k]
    assert keys and all(not torch.equal(before[k], after[k]) for k in keys)
    assert int(before["mod.dsa_step"]) == STEPS_PER_EPOCH and int(after["mod.dsa_step"]) == 2 * STEPS_PER_EPOCH


def test_tensorboard_gets_dsa_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((trained / "runs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "DSA/layer0/kept_fraction" in tags and "DSA/aux_loss" in tags
    assert [e.step for e in acc.Scalars("DSA/layer1/mass_kept")] == [0, 1]


def test_predict_writes_finite_scores(trained, jet_files):
    out = trained / "pred.root"
    run_weaver(
        ["--predict", "--data-test", *jet_files, "--data-config", DATA_CONFIG, "--network-config", NETWORK,
         *_opts(INDEXER_OPTS), "--model-prefix", trained / "net_epoch-1_state.pt", "--gpus", "",
         "--num-workers", "0", "--batch-size", "64", "--predict-output", out],
        cwd=trained,
    )
    events = uproot.open(out)["Events"].arrays(library="np")
    scores = np.stack([events[k] for k in events if k.startswith("score_")], axis=1)
    assert scores.shape == (sum(uproot.open(f)["tree"].num_entries for f in jet_files), 10)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_resume_continues_the_schedule(trained, jet_files, tmp_path):
    """--load-epoch 0 then epoch 1: the step buffer and schedule equal the uninterrupted run's."""
    for name in ("net_epoch-0_state.pt", "net_epoch-0_optimizer.pt"):
        shutil.copy(trained / name, tmp_path / name)
    run_weaver([*_train_args(jet_files, tmp_path, epochs=2), "--load-epoch", "0"], cwd=tmp_path)
    resumed = torch.load(tmp_path / "net_epoch-1_state.pt", weights_only=True)
    straight = torch.load(trained / "net_epoch-1_state.pt", weights_only=True)
    assert int(resumed["mod.dsa_step"]) == int(straight["mod.dsa_step"]) == 2 * STEPS_PER_EPOCH
    got = _dsa_lines((tmp_path / "train.log").read_text())
    want = _dsa_lines((trained / "train.log").read_text())
    assert len(got) == 1 and got[0]["dsa/kept_fraction_schedule"] == want[1]["dsa/kept_fraction_schedule"]


@pytest.mark.slow
def test_export_onnx_topk_matches_pytorch(jet_files, tmp_path):
    network = import_network_config(NETWORK, name="_e2e_dsa_network")
    data_config = load_data_config(DATA_CONFIG)
    options = {k: eval(v) for k, v in TOPK_OPTS.items()}  # noqa: S307 - literals written above
    torch.manual_seed(5)
    model, info = network.get_model(data_config, **options)
    state = tmp_path / "topk_state.pt"
    torch.save(model.state_dict(), state)
    onnx_path = tmp_path / "dsa_topk.onnx"
    run_weaver(["--data-config", DATA_CONFIG, "--network-config", NETWORK, *_opts(TOPK_OPTS), "--model-prefix",
                state, "--export-onnx", onnx_path], cwd=tmp_path)

    model, info = network.get_model(data_config, for_inference=True, **options)
    load_checkpoint(model, state).eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = weaver_batch(jet_files, DATA_CONFIG, max_jets=40)
    longest = int(batch["pf_mask"].sum(dim=(1, 2)).max())
    for n, length in ((40, 128), (24, longest)):  # two batches with different particle axes (dynamic in ONNX)
        inputs = {k: batch[k][:n, :, :length] for k in info["input_names"]}
        with torch.inference_mode():
            expected = model(*inputs.values()).numpy()
        feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
        got = session.run(None, feed)[0]
        assert got.shape == expected.shape == (n, 10)
        # hard top-k is discontinuous: a near-tie at the k-th key can flip under a different float op order, so
        # a rare jet may differ slightly; the bulk must agree to float precision and no prediction may change
        diff = np.abs(got - expected).max(axis=1)
        assert np.median(diff) <= 1e-5 and diff.max() <= 5e-3
        # a prediction may change only where the top two scores are closer than twice that jet's difference
        top2 = np.sort(expected, axis=1)[:, -2:]
        assert ((got.argmax(1) == expected.argmax(1)) | (top2[:, 1] - top2[:, 0] <= 2 * diff)).all()


@pytest.mark.slow
def test_pair_prior_trains_and_predicts_through_weaver(jet_files, tmp_path):
    """indexer_prior='pair' through the real CLI: distillation moves the pair coefficients, prediction is finite."""
    opts = {**TINY_OPTS, "dsa_enabled": "True", "dsa_mode": "'indexer'", "sparsity_ratio": "0.25",
            "indexer_prior": "'pair'"}
    common = ["--data-config", DATA_CONFIG, "--network-config", NETWORK, *_opts(opts), "--gpus", "",
              "--num-workers", "0", "--fetch-step", "1"]
    run_weaver(["--data-train", *jet_files, *common, "--model-prefix", tmp_path / "net", "--num-epochs", "1",
                "--steps-per-epoch", "3", "--batch-size", "16", "--start-lr", "1e-2", "--optimizer", "adamw",
                "--log-file", tmp_path / "train.log"], cwd=tmp_path)
    state = read_state_dict(tmp_path / "net_epoch-0_state.pt")
    coefficients = [v for k, v in state.items() if k.endswith("pair_proj.bias")]
    assert len(coefficients) == 2  # one per particle block
    assert all(not torch.allclose(c, torch.full_like(c, 0.5)) for c in coefficients)  # moved from 1/H (H = 2)
    out = tmp_path / "pred.root"
    run_weaver(["--predict", "--data-test", *jet_files, *common, "--model-prefix", tmp_path / "net_epoch-0_state.pt",
                "--batch-size", "64", "--predict-output", out], cwd=tmp_path)
    events = uproot.open(out)["Events"].arrays(library="np")
    scores = np.stack([events[k] for k in events if k.startswith("score_")], axis=1)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
