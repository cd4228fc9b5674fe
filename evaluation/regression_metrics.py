"""Track-regression metrics: angular and entry-point resolution of (entry point, direction) predictions.

Reads the ROOT file that ``weaver --predict --regression-mode`` writes (tree ``Events``: the model output as the
(N, 6) branch ``output`` and the label as an (N, 6) branch named after the data config's label, ``target`` for
data/Tracks/tracks.yaml). Columns are (x0/R, y0/R, z0/R, dx, dy, dz); positions are multiplied by
``position_scale`` (R = 17.7 m by default) to report metres. Usage:
``python -m evaluation.regression_metrics PRED.root [--out metrics.json]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evaluation.metrics import prediction_tree

__all__ = ["DEFAULT_POSITION_SCALE_M", "QUANTILE", "angle_deg", "format_metrics", "load_predictions", "main",
           "normalise_directions", "report_metrics", "track_metrics"]

DEFAULT_POSITION_SCALE_M = 17.7  # data/Tracks/tracks.yaml divides entry points by the sphere radius
QUANTILE = 0.68


def normalise_directions(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of (N, 3) rows plus a mask of rows that had zero/non-finite length (left as NaN)."""
    v = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(v, axis=1)
    bad = ~np.isfinite(norm) | (norm <= 0)
    unit = np.full_like(v, np.nan)
    unit[~bad] = v[~bad] / norm[~bad, None]
    return unit, bad


def angle_deg(true_dir: np.ndarray, pred_dir: np.ndarray) -> np.ndarray:
    """Angle in degrees between true and predicted directions (both normalised first); 180 for a zero prediction."""
    t, bad_t = normalise_directions(true_dir)
    p, bad_p = normalise_directions(pred_dir)
    if np.any(bad_t):
        raise ValueError(f"{int(bad_t.sum())} true direction(s) have zero or non-finite length")
    cos = np.clip(np.einsum("ij,ij->i", t, np.nan_to_num(p)), -1.0, 1.0)
    ang = np.degrees(np.arccos(cos))
    ang[bad_p] = 180.0
    return ang


def track_metrics(
    true: np.ndarray, pred: np.ndarray, *, position_scale: float = DEFAULT_POSITION_SCALE_M, quantile: float = QUANTILE
) -> dict[str, float | int | list[float]]:
    """Resolutions and biases for (N, 6) arrays of (x0, y0, z0)/scale and direction; positions reported in metres.

    angle_q68_deg: quantile of the true/predicted direction angle; position_q68_m: quantile of the entry-point
    distance; *_bias: mean of predicted - true (direction after normalising the prediction).
    """
    true = np.asarray(true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if true.ndim != 2 or true.shape[1] != 6 or pred.shape != true.shape:
        raise ValueError(f"expected two (N, 6) arrays, got true {true.shape} and pred {pred.shape}")
    if true.shape[0] == 0:
        raise ValueError("no events to evaluate")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    ang = angle_deg(true[:, 3:], pred[:, 3:])
    p_unit, bad = normalise_directions(pred[:, 3:])
    t_unit, _ = normalise_directions(true[:, 3:])
    dpos = (pred[:, :3] - true[:, :3]) * position_scale
    dist = np.linalg.norm(dpos, axis=1)
    dir_bias = np.nanmean(p_unit - t_unit, axis=0) if not np.all(bad) else np.full(3, np.nan)
    return {
        "n_events": int(true.shape[0]),
        "quantile": quantile,
        "angle_q68_deg": float(np.quantile(ang, quantile)),
        "angle_median_deg": float(np.median(ang)),
        "angle_mean_deg": float(np.mean(ang)),
        "position_q68_m": float(np.quantile(dist, quantile)),
        "position_median_m": float(np.median(dist)),
        "position_bias_m": [float(x) for x in dpos.mean(axis=0)],
        "direction_bias": [float(x) for x in dir_bias],
        "pred_direction_norm_mean": float(np.mean(np.linalg.norm(pred[:, 3:], axis=1))),
        "n_zero_direction": int(bad.sum()),
    }


def load_predictions(path: str | Path, *, label: str | None = None, output: str = "output") -> tuple[np.ndarray, ...]:
    """(true, pred) (N, 6) arrays from a weaver regression predict file; the label branch is auto-detected."""
    import uproot

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prediction file not found: {path}")
    with uproot.open(path) as f:
        tree = prediction_tree(f, path)
        names = set(tree.keys())
        if output not in names:
            raise ValueError(f"{path} has no '{output}' branch; branches: {sorted(names)}")
        pred = np.asarray(tree[output].array(library="np"))
        if label is None:
            candidates = [
                k for k in sorted(names) if k != output and tree[k].interpretation.inner_shape == pred.shape[1:]
            ]
            if len(candidates) != 1:
                raise ValueError(f"cannot tell the label branch among {candidates or sorted(names)}: pass --label")
            label = candidates[0]
        if label not in names:
            raise ValueError(f"{path} has no label branch '{label}'; branches: {sorted(names)}")
        true = np.asarray(tree[label].array(library="np"))
    return true, pred


def format_metrics(metrics: dict) -> str:
    """A short human-readable summary."""
    return (
        f"events: {metrics['n_events']}\n"
        f"angular resolution (68%): {metrics['angle_q68_deg']:.2f} deg (median {metrics['angle_median_deg']:.2f})\n"
        f"entry-point resolution (68%): {metrics['position_q68_m']:.2f} m (median {metrics['position_median_m']:.2f})\n"
        f"entry-point bias [m]: {', '.join(f'{x:+.3f}' for x in metrics['position_bias_m'])}\n"
        f"direction bias: {', '.join(f'{x:+.4f}' for x in metrics['direction_bias'])}"
    )


def report_metrics(metrics: dict, out: str | Path | None) -> dict:
    """Print the summary of track metrics and, with ``out``, write them there as JSON; returns ``metrics``."""
    print(format_metrics(metrics))
    if out:
        Path(out).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI: read a predict file, print the metrics, optionally write them as JSON."""
    ap = argparse.ArgumentParser(description="Angular and entry-point resolution of a weaver track-regression "
                                             "prediction file.")
    ap.add_argument("pred", help="ROOT file from weaver --predict --regression-mode")
    ap.add_argument("--out", help="write the metrics as JSON here")
    ap.add_argument("--label", help="label branch (default: the one (N, 6) branch besides 'output')")
    ap.add_argument("--output-branch", default="output")
    ap.add_argument("--position-scale", type=float, default=DEFAULT_POSITION_SCALE_M,
                    help="metres per unit of the position targets (R in tracks.yaml)")
    args = ap.parse_args(argv)
    try:
        true, pred = load_predictions(args.pred, label=args.label, output=args.output_branch)
        metrics = track_metrics(true, pred, position_scale=args.position_scale)
    except ValueError as err:
        ap.error(str(err))
    return report_metrics(metrics, args.out)


if __name__ == "__main__":
    main()
