"""Metrics from a hand-made prediction file in weaver's ``save_root`` layout, with answers worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from evaluation import metrics
from profiling import compare

CLASSES = ["QCD", "Hbb", "Tbqq"]
# (truth, [score_QCD, score_Hbb, score_Tbqq]); QCD/Hbb jets have score_QCD + score_Hbb = 0.9, so the Hbb-vs-QCD
# discriminant ranks them S > B > S > S > B > S > B > B: at 50% signal efficiency one of four QCD jets passes.
JETS = [
    ("Hbb", [0.1, 0.8, 0.1]), ("Hbb", [0.3, 0.6, 0.1]), ("Hbb", [0.4, 0.5, 0.1]), ("Hbb", [0.6, 0.3, 0.1]),
    ("QCD", [0.2, 0.7, 0.1]), ("QCD", [0.5, 0.4, 0.1]), ("QCD", [0.7, 0.2, 0.1]), ("QCD", [0.8, 0.1, 0.1]),
    ("Tbqq", [0.1, 0.1, 0.8]), ("Tbqq", [0.2, 0.2, 0.6]),
]


def write_weaver_prediction(path: Path) -> None:
    """Same branches as weaver's save_root: label_X (bool), score_label_X, the _label_ index and an observer."""
    truth = np.array([CLASSES.index(t) for t, _ in JETS])
    scores = np.array([s for _, s in JETS], dtype=np.float32)
    table = {}
    for i, name in enumerate(CLASSES):
        table[f"label_{name}"] = truth == i
        table[f"score_label_{name}"] = scores[:, i]
    table["_label_"] = truth
    table["jet_pt"] = np.linspace(500, 900, len(JETS)).astype(np.float32)
    arr = ak.Array(table)
    with uproot.recreate(path) as f:
        tree = f.mktree("Events", {k: arr[k].type for k in arr.fields})
        tree.extend({k: arr[k] for k in arr.fields})


def test_metrics_hand_computed(tmp_path: Path) -> None:
    pred = tmp_path / "pred.root"
    write_weaver_prediction(pred)
    m = metrics.metrics_from_file(pred)
    assert m["classes"] == CLASSES and m["n_jets"] == 10
    assert m["accuracy"] == pytest.approx(0.8)  # jets 4 (Hbb->QCD) and 5 (QCD->Hbb) are wrong
    # one-vs-rest AUC = fraction of (positive, negative) pairs ranked right, ties count 1/2
    assert m["auc"]["Hbb"] == pytest.approx(20 / 24)
    assert m["auc"]["QCD"] == pytest.approx(19.5 / 24)
    assert m["auc"]["Tbqq"] == pytest.approx(1.0)
    assert m["macro_auc"] == pytest.approx((20 / 24 + 19.5 / 24 + 1) / 3)
    assert m["rejection"]["Hbb"]["signal_efficiency"] == 0.5
    assert m["rejection"]["Hbb"]["rejection"] == pytest.approx(4.0)
    assert math.isinf(m["rejection"]["Tbqq"]["rejection"])  # no QCD jet passes: eB = 0
    n_qcd = m["rejection"]["Tbqq"]["n_background"]
    assert metrics.rejection_text(m["rejection"]["Tbqq"]) == f"> {n_qcd}"  # only a lower bound is known
    assert f"1/eB = > {n_qcd} at" in metrics.format_metrics(m)
    assert metrics.rejection_text(m["rejection"]["Hbb"]) == "4.0"
    assert set(m["rejection"]) == {"Hbb", "Tbqq"}


def test_metrics_cli_and_compare_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = tmp_path / "pred.root"
    write_weaver_prediction(pred)
    run = tmp_path / "run"
    run.mkdir()
    assert metrics.main([str(pred), "--out", str(run / "metrics.json")]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["rejection"]["Tbqq"]["rejection"] == "inf" and saved["accuracy"] == pytest.approx(0.8)
    # a minimal report.json as written by profiling.forward
    (run / "report.json").write_text(json.dumps({
        "model": {"model_class": "Toy", "params": 1234},
        "flops": {"per_jet": {"ours_macs": 2.5e6}},
        "latency_vs_batch": [{"batch_size": 8, "median_s": 0.004, "jets_per_s": 2000.0}],
        "memory": {"cpu_peak_rss_mb": 300.0},
        "environment": {"device": "cpu"},
    }))
    row = compare.load_run(run)
    assert row["accuracy"] == pytest.approx(0.8) and row["rejection"]["Hbb"] == pytest.approx(4.0)
    text = compare.table([row])
    assert "| run | Toy | 1,234 | 2.5 | 8 | 4.00 | 2000.0 | 300 | 0.8000 |" in text
    assert text.rstrip().endswith("| > 4 | 4.0 |")  # Tbqq: no QCD jet passes, so only a lower bound


def test_metrics_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        metrics.metrics_from_file(tmp_path / "missing.root")
    bad = tmp_path / "bad.root"
    with uproot.recreate(bad) as f:
        tree = f.mktree("Events", {"x": "float32"})
        tree.extend({"x": np.zeros(3, dtype=np.float32)})
    with pytest.raises(ValueError, match="score_"):
        metrics.metrics_from_file(bad)


def test_quark_gluon_working_points(tmp_path: Path) -> None:
    """QuarkGluon labels: jet_isQ against jet_isG at eS = 50% and 30%, worked out by hand.

    Ten quark jets with discriminant 0.99, 0.98, ..., 0.90; gluon jets at 0.985 and 0.955, eight more at 0.5. The
    30% point (three quark jets kept) lets one gluon jet through (1/eB = 10); the 50% point lets two (1/eB = 5).
    """
    q = np.round(np.arange(0.99, 0.895, -0.01), 3)
    g = np.array([0.985, 0.955] + [0.5] * 8)
    disc = np.concatenate([q, g]).astype(np.float32)
    table = {"jet_isQ": np.r_[np.ones(10, bool), np.zeros(10, bool)], "score_jet_isQ": disc}
    table["jet_isG"], table["score_jet_isG"] = ~table["jet_isQ"], (1 - disc).astype(np.float32)
    pred = tmp_path / "qg.root"
    with uproot.recreate(pred) as f:
        tree = f.mktree("Events", {k: v.dtype for k, v in table.items()})
        tree.extend(table)
    m = metrics.metrics_from_file(pred)
    assert m["label_scheme"] == "QuarkGluon" and m["classes"] == ["jet_isQ", "jet_isG"]
    assert set(m["rejection"]) == {"jet_isQ@0.5", "jet_isQ@0.3"}
    assert m["rejection"]["jet_isQ@0.3"]["rejection"] == pytest.approx(10.0)
    assert m["rejection"]["jet_isQ@0.5"]["rejection"] == pytest.approx(5.0)
    assert "jet_isQ vs jet_isG: 1/eB = 5.0 at eS = 50.0%" in metrics.format_metrics(m)


def test_custom_label_parquet_output(tmp_path: Path) -> None:
    """weaver's save_parquet layout for custom labels: a (jets, classes) ``scores`` column and the integer truth."""
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]], dtype=np.float32)
    truth = np.array([0, 1, 1, 2], dtype=np.int32)
    pred = tmp_path / "pred.parquet"
    ak.to_parquet(ak.Array({"scores": scores, "truth_label": truth}), pred)
    m = metrics.metrics_from_file(pred)
    assert m["classes"] == ["class_0", "class_1", "class_2"] and m["label_scheme"] is None
    assert m["accuracy"] == pytest.approx(0.5) and m["rejection"] == {}
    # one-vs-rest AUC = share of (positive, negative) pairs ranked right, ties 1/2: class_1 has 0.8 and 0.3 against
    # 0.2 and 0.3, i.e. 3.5 of 4 pairs
    assert m["auc"]["class_0"] == pytest.approx(1.0)
    assert m["auc"]["class_1"] == pytest.approx(3.5 / 4)
    ak.to_parquet(ak.Array({"scores": scores, "truth_label": truth + 5}), pred)
    with pytest.raises(ValueError, match="outside the 3 score columns"):
        metrics.metrics_from_file(pred)
