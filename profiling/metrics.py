"""Classification metrics from weaver's ``--predict`` output ROOT file (JetClass paper conventions).

weaver's ``save_root`` writes, for each label ``label_X`` of the data config, a boolean truth branch ``label_X`` and
the score ``score_label_X`` (tree ``Events``). We compute accuracy, macro one-vs-rest AUC and the background
rejection 1/eB of each class against QCD at the JetClass paper's signal efficiencies, using the discriminant
``score_X / (score_X + score_QCD)``.

Usage: ``python -m profiling.metrics PRED.root [--out metrics.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# signal efficiency of each working point (JetClass paper, Table 2): rejection = 1/eB at this eS vs QCD
WORKING_POINTS = {
    "Hbb": 0.5, "Hcc": 0.5, "Hgg": 0.5, "H4q": 0.5, "Hqql": 0.99,
    "Tbqq": 0.5, "Tbl": 0.995, "Wqq": 0.5, "Zqq": 0.5,
}
BACKGROUND = "QCD"
SCORE_PREFIX = "score_"


def read_predictions(path: str | Path, *, treename: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return (class short names, truth index per jet, score matrix) from a weaver prediction ROOT file."""
    import uproot

    if not Path(path).is_file():
        raise FileNotFoundError(f"prediction file not found: {path}")
    with uproot.open(path) as f:
        trees = [k.split(";")[0] for k, cls in f.classnames().items() if cls == "TTree"]
        name = treename or ("Events" if "Events" in trees else (trees[0] if trees else None))
        if name is None or name not in trees:
            raise ValueError(f"{path}: no TTree {treename or 'Events'!r} (trees: {trees})")
        tree = f[name]
        branches = set(tree.keys())
        labels = [b[len(SCORE_PREFIX):] for b in tree.keys() if b.startswith(SCORE_PREFIX)]
        if not labels:
            raise ValueError(f"{path}: no '{SCORE_PREFIX}<label>' branches; is this weaver --predict output?")
        missing = [lab for lab in labels if lab not in branches]
        if missing:
            raise ValueError(f"{path}: truth branch {missing[0]!r} missing for {SCORE_PREFIX}{missing[0]}")
        arrays = tree.arrays([*labels, *(SCORE_PREFIX + lab for lab in labels)], library="np")
    truth_onehot = np.stack([np.asarray(arrays[lab]).astype(bool) for lab in labels], axis=1)
    if not np.all(truth_onehot.sum(axis=1) == 1):
        raise ValueError(f"{path}: truth label branches are not one-hot for every jet")
    scores = np.stack([np.asarray(arrays[SCORE_PREFIX + lab], dtype=np.float64) for lab in labels], axis=1)
    names = [lab[len("label_"):] if lab.startswith("label_") else lab for lab in labels]
    return names, truth_onehot.argmax(axis=1), scores


def rejection_at(signal: np.ndarray, background: np.ndarray, efficiency: float) -> float:
    """1/eB at signal efficiency ``efficiency``: eB interpolated on the ROC curve (sklearn ``roc_curve``)."""
    from sklearn.metrics import roc_curve

    y = np.concatenate([np.ones(len(signal)), np.zeros(len(background))])
    fpr, tpr, _ = roc_curve(y, np.concatenate([signal, background]))
    eb = float(np.interp(efficiency, tpr, fpr))
    return math.inf if eb == 0 else 1.0 / eb


def compute_metrics(names: Sequence[str], truth: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro one-vs-rest AUC and per-class rejection vs QCD at the JetClass working points."""
    from sklearn.metrics import roc_auc_score

    names = list(names)
    n_jets = len(truth)
    if n_jets == 0:
        raise ValueError("no jets in the prediction file")
    acc = float(np.mean(scores.argmax(axis=1) == truth))
    aucs: dict[str, float] = {}
    for i, name in enumerate(names):
        is_cls = truth == i
        if 0 < is_cls.sum() < n_jets:
            aucs[name] = float(roc_auc_score(is_cls, scores[:, i]))
    rejections: dict[str, dict[str, float]] = {}
    if BACKGROUND in names:
        b = names.index(BACKGROUND)
        for i, name in enumerate(names):
            if i == b or name not in WORKING_POINTS:
                continue
            sig, bkg = truth == i, truth == b
            if not sig.any() or not bkg.any():
                continue
            denom = scores[:, i] + scores[:, b]
            disc = np.divide(scores[:, i], denom, out=np.zeros_like(denom), where=denom > 0)
            eff = WORKING_POINTS[name]
            rejections[name] = {"signal_efficiency": eff, "rejection": rejection_at(disc[sig], disc[bkg], eff),
                                "n_signal": int(sig.sum()), "n_background": int(bkg.sum())}
    return {
        "n_jets": int(n_jets),
        "classes": names,
        "accuracy": acc,
        "macro_auc": float(np.mean(list(aucs.values()))) if aucs else None,
        "auc": aucs,
        "rejection": rejections,
    }


def metrics_from_file(path: str | Path) -> dict[str, Any]:
    """Read a weaver prediction file and compute all metrics."""
    names, truth, scores = read_predictions(path)
    out = compute_metrics(names, truth, scores)
    out["source"] = str(path)
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def rejection_text(r: dict[str, Any]) -> str:
    """1/eB for a table; when no background jet passes only a lower bound is known: '> N_background'."""
    value = r["rejection"]
    if value == "inf" or (isinstance(value, float) and math.isinf(value)):
        return f"> {r['n_background']}"
    return f"{value:.1f}"


def format_metrics(m: dict[str, Any]) -> str:
    """Terminal table."""
    auc = "n/a" if m["macro_auc"] is None else f"{m['macro_auc']:.4f}"
    lines = [f"{m['n_jets']} jets: accuracy {m['accuracy']:.4f}, macro AUC {auc}"]
    for name, r in m["rejection"].items():
        note = " (no QCD jet passes: too few background jets to measure)" if rejection_text(r).startswith(">") else ""
        lines.append(f"  {name:>5} vs QCD: 1/eB = {rejection_text(r)} at eS = {r['signal_efficiency']:.1%}{note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m profiling.metrics PRED.root [--out metrics.json]``."""
    p = argparse.ArgumentParser(prog="python -m profiling.metrics", description=__doc__.splitlines()[0])
    p.add_argument("prediction")
    p.add_argument("--out", help="write metrics JSON here (e.g. into a profiling run directory)")
    args = p.parse_args(argv)
    try:
        m = metrics_from_file(args.prediction)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(_json_safe(m), indent=2))
    print(format_metrics(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
