"""End-to-end runs of ``python -m profiling.forward`` on tiny models: every report file, consistent numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from profiling import compare, forward, loading
from tests.conftest import SHARED_MODELS

REPO = Path(__file__).resolve().parents[1]
KIN = REPO / "data" / "JetClass" / "JetClass_kin.yaml"
WEAVER_PART = REPO / "tests" / "profiling_nets" / "weaver_part.py"
PARTICLENET = REPO / "networks" / "particlenet.py"
WEIGHTS = SHARED_MODELS
TINY_PART = {"embed_dims": [16, 32], "pair_embed_dims": [8, 8], "num_heads": 4, "num_layers": 2, "num_cls_layers": 1}
REPORT_FILES = {"report.json", "report.md", "trace.json", "throughput_vs_batch.png", "latency_vs_multiplicity.png",
                "op_breakdown.png"}


def tiny_data_config(tmp_path: Path, length: int) -> Path:
    path = tmp_path / f"kin_{length}.yaml"
    path.write_text(KIN.read_text().replace("length: 128", f"length: {length}"))
    return path


def _fast(**kw: object) -> dict[str, object]:
    return {"threads": 1, "min_run_time": 0.02, "ab_rounds": 4, "ftz_rounds": 2, "quiet": True, **kw}


def test_synthetic_run_with_trained_vs_other_weights(tmp_path: Path) -> None:
    dc_path = tiny_data_config(tmp_path, 24)
    # "trained" weights: a different init with a few weights pushed into the subnormal range
    model, _ = loading.build_model(WEAVER_PART, loading.load_data_config(dc_path), options=dict(TINY_PART))
    state = model.state_dict()
    w = state["mod.blocks.0.fc1.weight"]
    w.view(-1)[:7] = torch.tensor(1e-40)
    torch.save(state, tmp_path / "trained.pt")
    cfg = forward.ProfileConfig(
        network_config=str(WEAVER_PART), data_config=str(dc_path), weights=str(tmp_path / "trained.pt"),
        batch_sizes=[1, 8], synthetic=True, synthetic_multiplicity=(5, 20), multiplicities=[8, 24],
        out_dir=str(tmp_path / "run"), options=dict(TINY_PART), **_fast(),
    )
    res = forward.run_profile(cfg)
    out = tmp_path / "run"
    assert REPORT_FILES | {"trained_vs_untrained.png"} <= {p.name for p in out.iterdir()}
    rep = json.loads((out / "report.json").read_text())
    # throughput is batch / median latency, for every batch size
    for row in rep["latency_vs_batch"]:
        assert row["jets_per_s"] == pytest.approx(row["batch_size"] / row["median_s"])
        assert row["median_s"] > 0 and row["runs"] >= 5
    assert [r["batch_size"] for r in rep["latency_vs_batch"]] == [1, 8]
    assert rep["model"]["params"] == sum(p.numel() for p in model.parameters())
    # FLOPs: the three counters agree where they should; cost grows ~quadratically with multiplicity
    pj = rep["flops"]["per_jet"]
    assert pj["flopcountermode_flops"] == pytest.approx(pj["ours_matmul_flops"], rel=0.01)
    assert pj["ours_macs"] == pytest.approx(pj["ours_matmul_flops"] / 2)
    f8, f24 = (r["flops_per_jet"] for r in rep["latency_vs_multiplicity"])
    assert 2.5 < f24 / f8 < 9
    # the injected subnormals are counted exactly; the random B side has none
    cmp = rep["compare"]
    assert cmp["A"]["subnormal_weights"]["subnormal"] == 7
    assert cmp["B"]["subnormal_weights"]["subnormal"] == 0 and cmp["B"]["weights"] == "random"
    assert len(cmp["samples"]["A"]) == len(cmp["samples"]["B"]) == 4
    lo, hi = cmp["latency_ratio_ci95"]
    assert lo <= cmp["latency_ratio_B_over_A"] <= hi
    assert cmp["A"]["flops_per_jet"] == cmp["B"]["flops_per_jet"] == pj["ours_matmul_flops"]
    # Chrome trace loadable by Perfetto: JSON with traceEvents
    trace = json.loads((out / "trace.json").read_text())
    assert len(trace["traceEvents"]) > 10
    md = (out / "report.md").read_text()
    assert "Trained vs other weights" in md and f"{rep['model']['params']:,}" in md
    assert res["wall_time_s"] > 0


def test_real_root_input_cli(tmp_path: Path, jet_files: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pn"
    rc = forward.main([
        "--network-config", str(PARTICLENET), "--data-config", str(KIN), "--random", "--device", "cpu",
        "--batch-sizes", "2,8", "--input", str(jet_files[0].parent / "*.root"), "--out", str(out),
        "-o", "conv_params", "[(4, (8, 8)), (4, (16, 16))]", "-o", "fc_params", "[(16, 0.1)]",
        "--threads", "1", "--min-run-time", "0.02", "--multiplicities", "16", "--quiet",
    ])
    assert rc == 0
    text = capsys.readouterr().out
    assert "jets/s" in text and "report.md" in text
    assert REPORT_FILES <= {p.name for p in out.iterdir()}
    rep = json.loads((out / "report.json").read_text())
    assert rep["inputs"]["source"].startswith("8 real jets")
    mult = rep["inputs"]["multiplicity"]
    assert 1 <= mult["mean"] <= mult["max"] <= 128
    assert rep["config"]["options"] == {"conv_params": [[4, [8, 8]], [4, [16, 16]]], "fc_params": [[16, 0.1]]}
    for row in rep["latency_vs_batch"]:
        assert row["jets_per_s"] == pytest.approx(row["batch_size"] / row["median_s"])
    assert rep["profiler"]["top_self_cpu"][0]["self_cpu_ms"] > 0
    assert rep["memory"]["cpu_peak_rss_mb"] > 50
    assert rep["subnormals"]["weights"]["subnormal"] == 0  # fresh init: nothing to flush, so FTZ timing is skipped
    assert "skipped" in rep["subnormals"]["flush_denormal"]
    row = compare.load_run(out)
    assert row["params"] == rep["model"]["params"] and row["jets_per_s"] == max(
        r["jets_per_s"] for r in rep["latency_vs_batch"])


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--network-config", str(PARTICLENET), "--data-config", str(KIN), "--synthetic", "--out", str(tmp_path)]
    if not torch.cuda.is_available():
        assert forward.main([*base, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "torch.cuda.is_available() is False" in err
    assert forward.main([*base, "--batch-sizes", "4,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
    assert forward.main([*base, "-o", "nonsense_option", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and "nonsense_option" in err and err.count("\n") == 1  # one line, naming the option
    assert forward.main([*base, "--weights", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["kin", pytest.param("full", marks=pytest.mark.slow)])
def test_published_particlenet_is_confident_on_generated_jets(jet_files: list[Path], variant: str) -> None:
    """The published JetClass ParticleNet on our Pythia jets: confident and far above chance (pipeline check)."""
    path = WEIGHTS / f"ParticleNet_{variant}.pt"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    dc_path = REPO / "data" / "JetClass" / f"JetClass_{variant}.yaml"
    jets = loading.load_real_jets(jet_files, dc_path)
    idx = np.concatenate([np.flatnonzero(jets.labels == c)[:3] for c in range(10)])  # 3 jets per class
    assert len(idx) == 30
    lm = loading.load_model(PARTICLENET, loading.load_data_config(dc_path), weights=path)
    x = [jets.inputs[k][idx] for k in lm.input_names]
    n = int(x[-1].sum(dim=(1, 2)).max())  # drop all-padding slots: they never enter real particles' outputs
    x = [t[..., :n] for t in x]
    summary = forward.prediction_summary(lm.model, x)
    with torch.inference_mode():
        pred = lm.model(*x).argmax(dim=1).numpy()
    accuracy = float(np.mean(pred == jets.labels[idx]))
    assert summary["mean_max_prob"] > 0.4, summary
    assert summary["mean_entropy"] < 0.6 * math.log(10), summary
    assert accuracy > 0.3, accuracy  # chance is 0.1; measured ~0.6 with 8 jets/class
    # a fresh random init of the same network is close to uniform on the same jets
    fresh = loading.load_model(PARTICLENET, loading.load_data_config(dc_path), weights=None)
    assert forward.prediction_summary(fresh.model, x)["mean_entropy"] > 0.9 * math.log(10)


def test_memory_guard_scales_the_last_batch_and_skips_what_would_not_fit() -> None:
    """Batch sizes run smallest first; the peak-RSS growth of the last one, scaled linearly, predicts the next."""
    guard = forward.MemoryGuard(base_mb=1000.0, limit_mb=5000.0)
    assert guard.fits(10**6)  # nothing measured yet: the first batch always runs
    guard.last = (1, 1100.0)  # batch 1 raised the peak by 100 MiB
    assert guard.projected_mb(8) == pytest.approx(1800.0) and guard.fits(8)
    assert guard.projected_mb(64) == pytest.approx(7400.0) and not guard.fits(64)
    assert guard.note(64) == ("batch 64 skipped: its forward would take the process to about 7.2 GiB (scaled from "
                              "batch 1), above the 4.9 GiB this machine has room for")
    assert forward.MemoryGuard(base_mb=1000.0, limit_mb=None, last=(1, 9e9)).fits(512)  # no guard on CUDA
