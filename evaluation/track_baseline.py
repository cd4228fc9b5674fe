"""Classical track fit for the toy detector: charge-weighted principal axis of the hit positions.

Direction = principal axis of the hit-position covariance with weights q**4, with its sign chosen so that hit time
increases along it; entry point = the early-side intersection of the fitted line with the sphere. Evaluated with
the same metrics as the networks. Usage: ``python -m evaluation.track_baseline FILE.root [FILE ...]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.regression_metrics import DEFAULT_POSITION_SCALE_M, report_metrics, track_metrics

__all__ = ["BaselineConfig", "evaluate_baseline", "fit_file", "fit_track", "main"]


@dataclass(frozen=True)
class BaselineConfig:
    """Options of the principal-axis fit."""

    radius_m: float = 17.7  # sphere the entry point is put on
    charge_power: float = 4.0  # hit weight = q ** power: PMTs next to the track dominate, dark hits (q~1) fade


def fit_track(
    pos: np.ndarray, t: np.ndarray, q: np.ndarray, *, cfg: BaselineConfig = BaselineConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """(entry point [m], unit direction) for one event from hit positions (n, 3), times (n,) and charges (n,)."""
    if pos.shape[0] < 2:
        raise ValueError(f"need at least 2 hits to fit a track, got {pos.shape[0]}")
    w = np.clip(q, 0.0, None) ** cfg.charge_power
    if w.sum() <= 0:
        w = np.ones_like(q)
    w = w / w.sum()
    centre = w @ pos
    d = pos - centre
    cov = (d * w[:, None]).T @ d
    _, vecs = np.linalg.eigh(cov)
    axis = vecs[:, -1]
    proj = d @ axis
    # later hits lie further along the track: fix the sign by the weighted time-projection covariance
    if np.sum(w * (proj - w @ proj) * (t - w @ t)) < 0:
        axis = -axis
    # line centre + s * axis meets the sphere at s = -b -/+ sqrt(b^2 - c); take the early (smaller) root
    b = centre @ axis
    c = centre @ centre - cfg.radius_m**2
    s = -b - np.sqrt(max(b * b - c, 0.0))
    return centre + s * axis, axis


def fit_file(path: str | Path, *, cfg: BaselineConfig = BaselineConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Fit every event of a generated tracks file; returns (true, pred) (N, 6) arrays in tracks.yaml units."""
    import uproot

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tracks file not found: {path}")
    with uproot.open(path) as f:
        if "tree" not in f:
            raise ValueError(f"{path} has no 'tree' TTree (is it from data.generate_tracks?)")
        a = f["tree"].arrays(library="np")
    n = len(a["hit_x"])
    pred = np.zeros((n, 6))
    for i in range(n):
        pos = np.stack([a["hit_x"][i], a["hit_y"][i], a["hit_z"][i]], axis=1).astype(np.float64)
        entry, direction = fit_track(pos, a["hit_t"][i].astype(np.float64), a["hit_q"][i].astype(np.float64),
                                     cfg=cfg)
        pred[i, :3] = entry / DEFAULT_POSITION_SCALE_M
        pred[i, 3:] = direction
    true = np.stack([a[k] for k in ("track_x0", "track_y0", "track_z0", "track_dx", "track_dy", "track_dz")],
                    axis=1).astype(np.float64)
    true[:, :3] /= DEFAULT_POSITION_SCALE_M
    return true, pred


def evaluate_baseline(paths: Sequence[str | Path], *, cfg: BaselineConfig = BaselineConfig()) -> dict:
    """Metrics of the principal-axis fit over all events in ``paths``."""
    if not paths:
        raise ValueError("no input files given")
    trues, preds = zip(*(fit_file(p, cfg=cfg) for p in paths), strict=True)
    return track_metrics(np.concatenate(trues), np.concatenate(preds), position_scale=DEFAULT_POSITION_SCALE_M)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI: fit the files, print the resolutions, optionally write JSON."""
    ap = argparse.ArgumentParser(description="Principal-axis track-fit baseline on generated track files.")
    ap.add_argument("files", nargs="+", help="ROOT files from python -m data.generate_tracks")
    ap.add_argument("--charge-power", type=float, default=BaselineConfig.charge_power,
                    help="hit weight = q ** power (0: unweighted)")
    ap.add_argument("--out", help="write the metrics as JSON here")
    args = ap.parse_args(argv)
    try:
        metrics = evaluate_baseline(args.files, cfg=BaselineConfig(charge_power=args.charge_power))
    except ValueError as err:
        ap.error(str(err))
    return report_metrics(metrics, args.out)


if __name__ == "__main__":
    main()
