"""Classification metrics from weaver's ``--predict`` output (ROOT or parquet), for any label set.

weaver writes, for simple labels ``label_X``, a boolean truth branch ``label_X`` and the score ``score_label_X``
(tree ``Events``); for custom labels (e.g. JetClass-II, ``truth_label: jet_label``) one ``output`` branch with a
score per class and the integer truth branch; a parquet output holds ``scores`` and the truth. We compute accuracy,
macro one-vs-rest AUC and, for the datasets in ``LABEL_SCHEMES``, the background rejection 1/eB at their papers'
signal efficiencies with the discriminant ``score_S / (score_S + score_B)``:

- JetClass: each class against QCD at the JetClass paper's working points (Table 2);
- TopLandscape: ``jet_isTop`` against ``jet_isQCD`` at eS = 50% and 30% (top-tagging comparison, arXiv:1902.09914);
- QuarkGluon: ``jet_isQ`` against ``jet_isG`` at eS = 50% and 30% (ParT paper, arXiv:2202.03772).

Usage: ``python -m evaluation.metrics PRED.root [--out metrics.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CUSTOM_SCORES", "LABEL_SCHEMES", "SCORE_PREFIX", "LabelScheme", "compute_metrics", "format_metrics",
    "label_scheme", "main", "metrics_from_file", "prediction_tree", "read_predictions", "rejection_at",
    "rejection_text",
]

SCORE_PREFIX = "score_"
CUSTOM_SCORES = ("output", "scores")  # weaver's save_root / save_parquet names for custom-label scores


@dataclass(frozen=True)
class LabelScheme:
    """A dataset's background class and, per signal class, the signal efficiencies at which 1/eB is quoted."""

    name: str
    background: str
    working_points: dict[str, tuple[float, ...]]


LABEL_SCHEMES = (
    LabelScheme("JetClass", "QCD", {
        "Hbb": (0.5,), "Hcc": (0.5,), "Hgg": (0.5,), "H4q": (0.5,), "Hqql": (0.99,),
        "Tbqq": (0.5,), "Tbl": (0.995,), "Wqq": (0.5,), "Zqq": (0.5,)}),
    LabelScheme("TopLandscape", "jet_isQCD", {"jet_isTop": (0.5, 0.3)}),
    LabelScheme("QuarkGluon", "jet_isG", {"jet_isQ": (0.5, 0.3)}),
)


def label_scheme(names: Sequence[str]) -> LabelScheme | None:
    """The scheme whose background and at least one signal class are among ``names`` (None: no working points)."""
    return next((s for s in LABEL_SCHEMES if s.background in names and set(s.working_points) & set(names)), None)


def read_predictions(path: str | Path, *, treename: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return (class names, truth index per jet, score matrix) from a weaver prediction file (ROOT or parquet)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"prediction file not found: {path}")
    if Path(path).suffix == ".parquet":
        import awkward as ak

        arrays = {k: ak.to_numpy(v) for k, v in zip(*_parquet_columns(path), strict=True)}
    else:
        arrays = _root_arrays(path, treename)
    labels = [b[len(SCORE_PREFIX):] for b in arrays if b.startswith(SCORE_PREFIX)]
    if labels:
        return _simple_labels(path, arrays, labels)
    return _custom_labels(path, arrays)


def _parquet_columns(path: str | Path) -> tuple[list[str], list[Any]]:
    import awkward as ak

    table = ak.from_parquet(path)
    return list(table.fields), [table[f] for f in table.fields]


def prediction_tree(file: Any, path: str | Path, treename: str | None = None) -> Any:
    """The tree of an open (uproot) weaver prediction file: ``treename``, else ``Events``, else its first TTree."""
    trees = [k.split(";")[0] for k, cls in file.classnames().items() if cls == "TTree"]
    name = treename or ("Events" if "Events" in trees else (trees[0] if trees else None))
    if name is None or name not in trees:
        raise ValueError(f"{path}: no TTree {treename or 'Events'!r} (trees: {trees}); "
                         "is it a weaver --predict output?")
    return file[name]


def _root_arrays(path: str | Path, treename: str | None) -> dict[str, np.ndarray]:
    import uproot

    with uproot.open(path) as f:
        return prediction_tree(f, path, treename).arrays(library="np")


def _simple_labels(path: str | Path, arrays: dict[str, np.ndarray],
                   labels: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Simple labels: a truth branch ``label_X`` and a score ``score_label_X`` per class."""
    missing = [lab for lab in labels if lab not in arrays]
    if missing:
        raise ValueError(f"{path}: truth branch {missing[0]!r} missing for {SCORE_PREFIX}{missing[0]}")
    truth_onehot = np.stack([np.asarray(arrays[lab]).astype(bool) for lab in labels], axis=1)
    if not np.all(truth_onehot.sum(axis=1) == 1):
        raise ValueError(f"{path}: truth label branches are not one-hot for every jet")
    scores = np.stack([np.asarray(arrays[SCORE_PREFIX + lab], dtype=np.float64) for lab in labels], axis=1)
    names = [lab[len("label_"):] if lab.startswith("label_") else lab for lab in labels]
    return names, truth_onehot.argmax(axis=1), scores


def _custom_labels(path: str | Path, arrays: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Custom labels: a (jets, classes) score branch and one integer truth branch holding the class index."""
    score_name = next((k for k in CUSTOM_SCORES if k in arrays), None)
    if score_name is None:
        raise ValueError(f"{path}: neither '{SCORE_PREFIX}<label>' nor {' / '.join(CUSTOM_SCORES)} branches; "
                         "is this weaver --predict output?")
    scores = np.asarray(np.stack(list(arrays[score_name])) if arrays[score_name].dtype == object
                        else arrays[score_name], dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{path}: '{score_name}' has shape {scores.shape}, expected (jets, classes)")
    ints = [k for k, v in arrays.items() if k != score_name and np.asarray(v).dtype.kind in "iu"
            and np.asarray(v).ndim == 1]
    truth_name = next((k for k in ("truth_label", "_label_") if k in ints), ints[0] if len(ints) == 1 else None)
    if truth_name is None:
        raise ValueError(f"{path}: cannot tell the truth branch among integer branches {ints or 'none'}")
    truth = np.asarray(arrays[truth_name], dtype=np.int64)
    if truth.min() < 0 or truth.max() >= scores.shape[1]:
        raise ValueError(f"{path}: truth branch '{truth_name}' has values {truth.min()}..{truth.max()} outside "
                         f"the {scores.shape[1]} score columns")
    return [f"class_{i}" for i in range(scores.shape[1])], truth, scores


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
    scheme = label_scheme(names)
    return {
        "n_jets": int(n_jets),
        "label_scheme": scheme.name if scheme else None,
        "classes": names,
        "accuracy": acc,
        "macro_auc": float(np.mean(list(aucs.values()))) if aucs else None,
        "auc": aucs,
        "rejection": _rejections(scheme, names, truth, scores) if scheme else {},
    }


def _rejections(scheme: LabelScheme, names: list[str], truth: np.ndarray,
                scores: np.ndarray) -> dict[str, dict[str, Any]]:
    """1/eB of each signal class against the scheme's background; keyed ``S`` (one point) or ``S@eS`` (several)."""
    b = names.index(scheme.background)
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        sig, bkg = truth == i, truth == b
        if name not in scheme.working_points or not sig.any() or not bkg.any():
            continue
        denom = scores[:, i] + scores[:, b]
        disc = np.divide(scores[:, i], denom, out=np.zeros_like(denom), where=denom > 0)
        effs = scheme.working_points[name]
        for eff in effs:
            key = name if len(effs) == 1 else f"{name}@{eff:g}"
            out[key] = {"signal": name, "background": scheme.background, "signal_efficiency": eff,
                        "rejection": rejection_at(disc[sig], disc[bkg], eff),
                        "n_signal": int(sig.sum()), "n_background": int(bkg.sum())}
    return out


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
    for r in m["rejection"].values():
        bkg = r["background"]
        note = (f" (no {bkg} jet passes: too few background jets to measure)"
                if rejection_text(r).startswith(">") else "")
        lines.append(f"  {r['signal']:>5} vs {bkg}: 1/eB = {rejection_text(r)} at "
                     f"eS = {r['signal_efficiency']:.1%}{note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m evaluation.metrics PRED.root|PRED.parquet [--out metrics.json]``."""
    p = argparse.ArgumentParser(prog="python -m evaluation.metrics", description=__doc__.splitlines()[0])
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
