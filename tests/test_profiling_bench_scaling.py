"""The dense-vs-DSA scaling harness: option merging, the ratio table and one in-process point (no subprocesses)."""

from __future__ import annotations

import pytest

from profiling import bench_scaling


def test_point_options_merge_workload_mode_and_user_options() -> None:
    dense = bench_scaling.point_options("jets", "dense", {"num_heads": 4}, topk=16)
    dsa = bench_scaling.point_options("jets", "dsa", {"num_heads": 4}, topk=16)
    assert dense["num_heads"] == dsa["num_heads"] == 4 and dense["embed_dims"] == (32, 32)
    assert dense["attention"] == "softmax" and "topk" not in dense  # --topk is DSA's only
    assert dsa["attention"] == "dsa_indexer" and dsa["topk"] == 16
    assert bench_scaling.point_options("tracks", "dsa", {})["attention"] == "dsa_indexer"
    with pytest.raises(ValueError, match="valid modes"):
        bench_scaling.point_options("tracks", "sparse", {})


def test_ratio_table_ratios_statuses_and_reference() -> None:
    rows = [
        {"size": 100, "mode": "dense", "status": "ok", "time_s": 0.2, "peak_mb": 40.0},
        {"size": 100, "mode": "dsa", "status": "ok", "time_s": 0.1, "peak_mb": 10.0},
        {"size": 200, "mode": "dense", "status": "skipped (N > 100)"},
        {"size": 200, "mode": "dsa", "status": "ok", "time_s": 0.3, "peak_mb": 12.0},
    ]
    lines = bench_scaling.ratio_table(rows, size_name="hits", ref_size=999).splitlines()
    assert lines[0].startswith("| hits |") and "t(N)/t(100)" in lines[0]  # 999 not measured: the smallest N
    assert lines[2] == "| 100 | 0.2000 | 0.1000 | 2.0x | 40 | 10 | 4.0x | 1.00 |"
    assert lines[3] == "| 200 | skipped (N > 100) | 0.3000 | - | - | 12 | - | 3.00 |"


def test_cli_needs_a_workload() -> None:
    with pytest.raises(SystemExit):
        bench_scaling.main(["--sizes", "8"])


@pytest.mark.parametrize("train", [False, True], ids=["eval", "training_step"])
@pytest.mark.parametrize("mode", ["dense", "dsa"])
def test_one_track_point_in_process(mode: str, train: bool) -> None:
    options = bench_scaling.point_options("tracks", mode, {"embed_dims": (16, 16), "pair_embed_dims": (8,),
                                                           "num_heads": 2, "num_layers": 1, "topk": 8})
    row = bench_scaling.run_point("tracks", 24, mode, options, batch=2, repeats=1, threads=1, train=train)
    assert row["status"] == "ok" and row["size"] == 24 and row["params"] > 0
    assert row["time_s"] > 0 and row["peak_mb"] >= 0
