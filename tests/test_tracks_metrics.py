"""Track-regression metrics on hand-made arrays with known answers, and reading a weaver-style predict file."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from evaluation.regression_metrics import angle_deg, load_predictions, main, track_metrics


def _random_tracks(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    p = rng.normal(size=(n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return np.concatenate([p, d], axis=1)


def _rotate_each(d: np.ndarray, angle_deg_: float, seed: int = 1) -> np.ndarray:
    """Rotate every row by a fixed angle about a random axis perpendicular to it (Rodrigues)."""
    rng = np.random.default_rng(seed)
    k = np.cross(d, rng.normal(size=d.shape))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    a = np.deg2rad(angle_deg_)
    return d * np.cos(a) + np.cross(k, d) * np.sin(a)


def test_rotation_by_known_angle_and_scaled_prediction() -> None:
    true = _random_tracks(500)
    pred = true.copy()
    pred[:, 3:] = 3.7 * _rotate_each(true[:, 3:], 12.0)  # unnormalised prediction: only its direction counts
    m = track_metrics(true, pred)
    assert m["angle_q68_deg"] == pytest.approx(12.0, abs=1e-6)
    assert m["angle_median_deg"] == pytest.approx(12.0, abs=1e-6)
    assert m["position_q68_m"] == pytest.approx(0.0, abs=1e-9)
    assert m["pred_direction_norm_mean"] == pytest.approx(3.7)


def test_mixture_of_angles_gives_the_68_percent_quantile() -> None:
    true = _random_tracks(1000)
    pred = true.copy()
    angles = np.repeat([1.0, 5.0, 30.0], [600, 200, 200])  # 68% quantile falls in the 5 degree group
    for a in np.unique(angles):
        rows = angles == a
        pred[rows, 3:] = _rotate_each(true[rows, 3:], a)
    np.testing.assert_allclose(angle_deg(true[:, 3:], pred[:, 3:]), angles, atol=1e-6)
    assert track_metrics(true, pred)["angle_q68_deg"] == pytest.approx(5.0, abs=1e-6)


def test_entry_point_shift_gives_distance_and_bias_in_metres() -> None:
    true = _random_tracks(200)
    pred = true.copy()
    pred[:, :3] += np.array([0.03, -0.04, 0.0])  # 0.05 R = 0.885 m at R = 17.7 m
    m = track_metrics(true, pred)
    assert m["position_q68_m"] == pytest.approx(0.885, rel=1e-6)
    np.testing.assert_allclose(m["position_bias_m"], [0.531, -0.708, 0.0], atol=1e-9)
    assert m["angle_q68_deg"] == pytest.approx(0.0, abs=1e-5)
    assert track_metrics(true, pred, position_scale=1.0)["position_q68_m"] == pytest.approx(0.05)


def test_reversed_and_zero_predictions_count_as_180_degrees() -> None:
    true = _random_tracks(4)
    pred = true.copy()
    pred[0, 3:] *= -1
    pred[1, 3:] = 0.0
    ang = angle_deg(true[:, 3:], pred[:, 3:])
    np.testing.assert_allclose(ang, [180, 180, 0, 0], atol=1e-5)
    assert track_metrics(true, pred)["n_zero_direction"] == 1


def test_bad_shapes_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        track_metrics(np.zeros((3, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="no events"):
        track_metrics(np.zeros((0, 6)), np.zeros((0, 6)))


def test_reads_a_weaver_style_predict_file(tmp_path: Path) -> None:
    # the layout of weaver's save_root in regression mode: tree "Events", (N, 6) "output" + label + observers
    true = _random_tracks(50).astype(np.float32)
    pred = true.copy()
    pred[:, 3:] = _rotate_each(true[:, 3:].astype(np.float64), 7.0).astype(np.float32)
    table = ak.Array({"output": pred, "target": true, "n_hits": np.arange(50, dtype=np.float32)})
    path = tmp_path / "pred.root"
    with uproot.recreate(path) as f:
        tree = f.mktree("Events", {k: table[k].type for k in table.fields})
        tree.extend({k: table[k] for k in table.fields})
    t, p = load_predictions(path)
    np.testing.assert_array_equal(t, true)
    out = tmp_path / "m.json"
    metrics = main([str(path), "--out", str(out)])
    assert metrics["angle_q68_deg"] == pytest.approx(7.0, abs=1e-3)
    assert json.loads(out.read_text())["n_events"] == 50
    with pytest.raises(ValueError, match="no label branch"):
        load_predictions(path, label="nope")
    with pytest.raises(ValueError, match="not found"):
        load_predictions(tmp_path / "missing.root")
