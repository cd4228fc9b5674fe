"""The real ``weaver`` CLI trains every network config in networks/ (found by listing the folder, so a new one is
covered without editing this file) and the test-only attention kind of tests/kinds/ for one epoch, then predicts.

What is checked is what weaver guarantees for any model: an epoch state file, a finite training loss in the log,
and a prediction file with one finite row per test event.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import uproot

from data.generate_tracks import generate_tracks
from tests.helpers import REPO_ROOT, discover_networks, family_setup, run_weaver

KIND_NETWORK = REPO_ROOT / "tests" / "kinds" / "scaled_softmax.py"


@pytest.fixture(scope="module")
def track_files(tmp_path_factory) -> tuple[Path, Path]:
    """12 events of a cheap detector (3000 PMTs) in two files."""
    out = tmp_path_factory.mktemp("tracks")
    return generate_tracks(events=12, out_dir=out, seed=5, workers=1, events_per_file=6, progress=False,
                           n_pmts=3000, min_hits=50)


def _options(options: dict) -> list[str]:
    return [a for k, v in options.items() for a in ("-o", k, repr(v))]


def _train_and_predict(network: Path, data_config: Path, options: dict, train: list[Path], test: Path, run: Path,
                       *, regression: bool) -> np.ndarray:
    config = run / data_config.name  # weaver writes side files next to its data config: keep them out of the repo
    shutil.copy(data_config, config)
    common = ["--data-config", config, "--network-config", network, *_options(options), "--gpus", "",
              "--num-workers", "0", "--batch-size", "8", "--fetch-step", "1"] + (["--regression-mode"] * regression)
    run_weaver([*common, "--data-train", *train, "--num-epochs", "1", "--samples-per-epoch", "48",
                "--samples-per-epoch-val", "16", "--start-lr", "1e-3", "--optimizer", "adamw",
                "--model-prefix", run / "net", "--log-file", run / "train.log"], cwd=run)
    log = (run / "train.log").read_text()
    assert (run / "net_epoch-0_state.pt").is_file()
    assert np.isfinite(float(log.split("Train AvgLoss: ")[1].split(",")[0]))
    pred = run / "pred.root"
    run_weaver([*common, "--predict", "--data-test", test, "--model-prefix", run / "net_epoch-0_state.pt",
                "--predict-output", pred], cwd=run)
    with uproot.open(pred) as f:
        tree = f["Events"]
        name = "output" if regression else next(k for k in tree.keys() if k.startswith("score_"))
        return tree[name].array(library="np")


@pytest.mark.parametrize("network", [*discover_networks(), "kinds/scaled_softmax.py"])
def test_weaver_trains_and_predicts_every_network_config(network, jet_files, track_files, tmp_path):
    if network.startswith("kinds/"):
        path, (family, data_config, options) = KIND_NETWORK, family_setup("part.py")
        options["attention"] = "scaled_softmax"
    else:
        path, (family, data_config, options) = REPO_ROOT / "networks" / network, family_setup(network)
    if family == "tracks":
        train, test = [track_files[0]], track_files[1]
    else:
        train, test = jet_files[:-1], jet_files[-1]
    scores = _train_and_predict(path, data_config, options, train, test, tmp_path, regression=family == "tracks")
    assert len(scores) > 0 and np.isfinite(scores).all()
