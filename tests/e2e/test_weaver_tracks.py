"""The real ``weaver --regression-mode`` trains and predicts networks/track_transformer.py on generated muon events,
and evaluation.regression_metrics reads the prediction."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import uproot

from data.generate_tracks import generate_tracks
from evaluation.regression_metrics import main as metrics_main
from tests.conftest import REPO_ROOT
from tests.helpers import run_weaver

NETWORK = REPO_ROOT / "networks" / "track_transformer.py"
TINY_OPTS = {"embed_dims": "(16,16)", "pair_embed_dims": "(8,)", "num_heads": "2", "num_layers": "1",
             "num_cls_layers": "1", "max_hits": "64"}


def _opts(opts: dict[str, str]) -> list[str]:
    return [a for k, v in opts.items() for a in ("-o", k, v)]


@pytest.fixture(scope="module")
def track_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    """24 events of a cheaper detector (3000 PMTs, ~200 hits per event) in two files, plus a copy of tracks.yaml."""
    out = tmp_path_factory.mktemp("tracks")
    train, test = generate_tracks(events=24, out_dir=out / "data", seed=21, workers=1, events_per_file=12,
                                  progress=False, n_pmts=3000, min_hits=50)
    config = out / "tracks.yaml"  # weaver writes side files next to its data config: keep them out of the repo
    shutil.copy(REPO_ROOT / "data" / "Tracks" / "tracks.yaml", config)
    return train, test, config


def _train_predict(track_files, run: Path, opts: dict[str, str]) -> Path:
    train, test, config = track_files
    common = ["--regression-mode", "--data-config", config, "--network-config", NETWORK, *_opts(opts), "--gpus", "",
              "--num-workers", "0", "--batch-size", "4", "--fetch-step", "1"]
    run_weaver([*common, "--data-train", train, "--data-val", test, "--num-epochs", "1", "--start-lr", "1e-3",
                "--optimizer", "adamw", "--model-prefix", run / "net", "--log-file", run / "train.log"], cwd=run)
    log = (run / "train.log").read_text()
    assert "Epoch #0 training" in log and "Current validation metric" in log
    assert "TrackLoss" in log  # weaver trained with our loss (bound with the DSA aux terms)
    pred = run / "pred.root"
    run_weaver([*common, "--predict", "--data-test", test, "--model-prefix", run / "net_epoch-0_state.pt",
                "--predict-output", pred], cwd=run)
    return pred


def _check_prediction(pred: Path, test: Path, run: Path) -> dict:
    with uproot.open(pred) as f:
        out = f["Events"]["output"].array(library="np")
        target = f["Events"]["target"].array(library="np")
    assert out.shape == (12, 6) and target.shape == (12, 6) and np.isfinite(out).all()
    truth = uproot.open(test)["tree"].arrays(library="np")
    np.testing.assert_allclose(np.sort(target[:, 3]), np.sort(truth["track_dx"]), rtol=1e-6, atol=1e-6)
    metrics = metrics_main([str(pred), "--out", str(run / "metrics.json")])
    assert metrics["n_events"] == 12 and metrics["n_zero_direction"] == 0
    assert 0.0 <= metrics["angle_q68_deg"] <= 180.0 and np.isfinite(metrics["position_q68_m"])
    # the pointer head puts entry points on the unit sphere (x R = 17.7 m), so they are never far off the detector
    assert np.all(np.abs(np.linalg.norm(out[:, :3], axis=1) - 1.0) < 0.5)
    return metrics


def test_weaver_trains_and_predicts_the_dense_hit_transformer(track_files, tmp_path):
    pred = _train_predict(track_files, tmp_path, TINY_OPTS)
    _check_prediction(pred, track_files[1], tmp_path)


@pytest.mark.slow
def test_weaver_trains_and_predicts_with_dsa_and_latent_tokens(track_files, tmp_path):
    opts = {**TINY_OPTS, "attention": "'dsa'", "topk": "16", "latent_tokens": "4", "latent_layers": "1"}
    pred = _train_predict(track_files, tmp_path, opts)
    _check_prediction(pred, track_files[1], tmp_path)
    assert "DSA epoch 0" in (tmp_path / "train.log").read_text()
