"""evaluation.track_budget end to end: real weaver training runs stopped on the clock, checkpoints chosen per budget,
predicted, scored and plotted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.generate_tracks import generate_tracks
from evaluation.track_budget import checkpoint_at, epoch_records, run_study


def test_checkpoint_at_takes_the_best_validation_loss_saved_within_the_budget():
    records = [{"epoch": 0, "minutes": 1.0, "val_loss": 0.5}, {"epoch": 1, "minutes": 2.0, "val_loss": 0.2},
               {"epoch": 2, "minutes": 3.0, "val_loss": 0.3}, {"epoch": 3, "minutes": 4.5, "val_loss": 0.1},
               {"epoch": 4, "minutes": 4.9, "val_loss": float("nan")}]
    assert checkpoint_at(records, 0.5) is None
    assert checkpoint_at(records, 1.5)["epoch"] == 0
    assert checkpoint_at(records, 4.0)["epoch"] == 1
    assert checkpoint_at(records, 5.0)["epoch"] == 3  # an epoch without a validation loss is never chosen


@pytest.mark.slow
def test_budget_study_trains_on_the_clock_and_scores_every_budget(tmp_path):
    """Two models side by side for 40 s each on a cheap detector (~200 hits per event), 2 steps per epoch."""
    train, val, test = generate_tracks(events=36, out_dir=tmp_path / "data", seed=31, workers=1, events_per_file=12,
                                       progress=False, n_pmts=3000, min_hits=50)
    out = tmp_path / "study"
    result = run_study(train=[str(train)], val=[str(val)], test=[str(test)], models=["dense_64", "dsa_all"],
                       seeds=[1], minutes=0.67, budgets=[0.67], out=out, parallel=2, steps_per_epoch=2)
    for name in ("dense_64", "dsa_all"):
        records = epoch_records(out / f"{name}_seed1")
        assert records, name
        assert all(r["minutes"] <= 0.67 + 0.1 for r in records)  # killed on the clock (one poll of slack)
        assert all(np.isfinite(r["val_loss"]) and np.isfinite(r["train_loss"]) for r in records[:-1])
        (row,) = [r for r in result["rows"] if r["model"] == name]
        assert 0.0 < row["metrics"]["angle_q68_deg"] <= 180.0 and row["metrics"]["position_q68_m"] > 0
        assert result["step_times"][name]["seconds_per_step"] > 0
    assert json.loads((out / "budget.json").read_text())["baseline"]["angle_q68_deg"] > 0
    table = (out / "budget.md").read_text()
    assert "principal axis" in table and "DSA indexer" in table and "s per training step" in table
    assert (out / "budget.png").stat().st_size > 10_000 and (out / "budget_curves.png").stat().st_size > 10_000
