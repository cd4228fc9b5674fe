"""End to end: generated track files -> real `weaver --regression-mode` (train 1 epoch, then --predict) -> metrics."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import uproot

from data.generate_tracks import generate_tracks
from evaluation.regression_metrics import main as metrics_main

REPO_ROOT = Path(__file__).resolve().parents[1]
WEAVER = str(Path(sys.executable).with_name("weaver"))

# A minimal network config in weaver's interface: per-hit MLP, masked mean pooling, 6 outputs.
TINY_NETWORK = '''
import torch
from torch import nn


class HitMLP(nn.Module):
    def __init__(self, in_dim, hidden=16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv1d(in_dim, hidden, 1), nn.ReLU(), nn.Conv1d(hidden, hidden, 1), nn.ReLU())
        self.head = nn.Linear(hidden, 6)

    def forward(self, points, features, mask):
        h = self.mlp(features) * mask
        return self.head(h.sum(dim=2) / mask.sum(dim=2).clamp(min=1))


def get_model(data_config, **kwargs):
    model = HitMLP(len(data_config.input_dicts["hit_features"]))
    return model, {"input_names": list(data_config.input_names), "output_names": ["output"]}


def get_loss(data_config, **kwargs):
    return torch.nn.MSELoss()
'''


def _weaver(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([WEAVER, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"weaver {' '.join(args)} failed:\n{log[-3000:]}"
    return log


def test_weaver_trains_predicts_and_metrics_read_the_output(tmp_path: Path) -> None:
    train_file, test_file = generate_tracks(
        events=24, out_dir=tmp_path / "data", seed=77, workers=1, events_per_file=12, progress=False
    )
    # copy the data config so weaver's side files never land in the repository
    config = tmp_path / "tracks.yaml"
    shutil.copy(REPO_ROOT / "data" / "Tracks" / "tracks.yaml", config)
    network = tmp_path / "tiny_track_net.py"
    network.write_text(TINY_NETWORK)
    common = ["--regression-mode", "-c", str(config), "-n", str(network), "--gpus", "", "--num-workers", "0",
              "--batch-size", "4"]
    log = _weaver([*common, "--data-train", str(train_file), "--data-val", str(train_file), "--num-epochs", "1",
                   "--run-mode", "train,val", "--model-prefix", str(tmp_path / "model" / "net"),
                   "--log-file", str(tmp_path / "train.log")], tmp_path)
    assert "Epoch #0" in log
    pred = tmp_path / "pred.root"
    _weaver([*common, "--predict", "--data-test", str(test_file), "--model-prefix",
             str(tmp_path / "model" / "net_epoch-0_state.pt"), "--predict-output", str(pred)], tmp_path)

    with uproot.open(pred) as f:
        tree = f["Events"]
        out = tree["output"].array(library="np")
        target = tree["target"].array(library="np")
        n_hits = tree["n_hits"].array(library="np")
    assert out.shape == (12, 6) and target.shape == (12, 6)
    # the yaml's label is (entry / 17.7 m, direction) of the generated truth, in some event order
    truth = uproot.open(test_file)["tree"].arrays(library="np")
    expect = np.stack([truth["track_x0"] / 17.7, truth["track_y0"] / 17.7, truth["track_z0"] / 17.7,
                       truth["track_dx"], truth["track_dy"], truth["track_dz"]], axis=1)
    order_p, order_t = np.argsort(target[:, 0]), np.argsort(expect[:, 0])
    np.testing.assert_allclose(target[order_p], expect[order_t], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.sort(n_hits), np.sort(truth["n_hits"]))

    metrics = metrics_main([str(pred), "--out", str(tmp_path / "metrics.json")])
    assert metrics["n_events"] == 12
    assert 0.0 <= metrics["angle_q68_deg"] <= 180.0 and np.isfinite(metrics["position_q68_m"])
