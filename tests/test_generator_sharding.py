"""Sharded generation (``--num-shards/--shard-index``): disjoint files whose union equals one run (same seed)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import pytest
import uproot

from data.generate import generate_dataset, main

KW = dict(classes="QCD,Zqq", jets_per_class=6, jets_per_file=3, seed=4242, progress=False, workers=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[list[Path]]]:
    """One run of 4 files (2 classes x 2 files), and the same arguments split into 2 shards."""
    single = generate_dataset(out_dir=tmp_path_factory.mktemp("single"), **KW)
    sharded_dir = tmp_path_factory.mktemp("sharded")
    shards = [generate_dataset(out_dir=sharded_dir, shard_index=k, num_shards=2, **KW) for k in range(2)]
    return single, shards


def test_shards_are_disjoint_and_cover_the_single_run(runs: tuple[list[Path], list[list[Path]]]) -> None:
    single, shards = runs
    names = [{p.name for p in shard} for shard in shards]
    assert names[0] and names[1] and not names[0] & names[1]
    assert names[0] | names[1] == {p.name for p in single}
    # round-robin over the plan: each shard gets one file of each class
    assert sorted(names[0]) == ["ZJetsToNuNu_000.root", "ZToQQ_000.root"]


def test_sharded_files_equal_the_single_run(runs: tuple[list[Path], list[list[Path]]]) -> None:
    single, shards = runs
    by_name = {p.name: p for shard in shards for p in shard}
    for path in single:
        a = uproot.open(path)["tree"].arrays()
        b = uproot.open(by_name[path.name])["tree"].arrays()
        assert a.fields == b.fields
        assert len(a) == 3
        for field in a.fields:
            assert ak.all(ak.ravel(a[field] == b[field])), f"{path.name}:{field} differs"


def test_more_shards_than_files_writes_nothing(tmp_path: Path) -> None:
    assert generate_dataset(out_dir=tmp_path, shard_index=5, num_shards=6, **KW) == []
    assert not any(tmp_path.glob("*.root"))


@pytest.mark.parametrize(
    ("shard_index", "num_shards", "message"),
    [(2, 2, "shard_index must be in"), (-1, 2, "shard_index must be in"), (0, 0, "num_shards must be >= 1")],
)
def test_bad_shard_arguments_raise(tmp_path: Path, shard_index: int, num_shards: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_dataset(out_dir=tmp_path, shard_index=shard_index, num_shards=num_shards, **KW)
    assert not any(tmp_path.glob("*.root"))


def test_cli_reports_bad_shard_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--classes", "QCD", "--jets-per-class", "3", "--out", str(tmp_path), "--num-shards", "2",
              "--shard-index", "3"])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "shard_index must be in [0, 1]" in err and "Traceback" not in err
