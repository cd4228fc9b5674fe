"""File format, determinism, resume and input validation of the Pythia jet generator (data.generate)."""

from __future__ import annotations

import os
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from data.generate import CLASSES, generate_dataset, main, parse_classes
from data.rootio import LABELS, expected_branch_types

CONFIG = Path(__file__).resolve().parents[1] / "data" / "JetClass" / "JetClass_full.yaml"


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """QCD + Zqq, 10 jets each split 6 + 4, generated twice with the same seed (1 and 2 workers)."""
    kw = dict(classes="QCD,Zqq", jets_per_class=10, jets_per_file=6, seed=777, progress=False)
    a = generate_dataset(out_dir=tmp_path_factory.mktemp("run_a"), workers=1, **kw)
    b = generate_dataset(out_dir=tmp_path_factory.mktemp("run_b"), workers=2, **kw)
    return a, b


def test_class_names_and_file_naming(small_runs: tuple[list[Path], list[Path]]) -> None:
    assert list(CLASSES) == ["QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl"]
    assert list(LABELS) == list(CLASSES)
    names = [p.name for p in small_runs[0]]
    assert names == ["ZJetsToNuNu_000.root", "ZJetsToNuNu_001.root", "ZToQQ_000.root", "ZToQQ_001.root"]
    entries = [uproot.open(p)["tree"].num_entries for p in small_runs[0]]
    assert entries == [6, 4, 6, 4]
    # no temporary files are left behind
    assert sorted(p.name for p in small_runs[0][0].parent.iterdir()) == names


def test_tree_is_ttree_with_exact_branches(small_runs: tuple[list[Path], list[Path]]) -> None:
    expected = expected_branch_types()
    for path in small_runs[0]:
        with uproot.open(path) as f:
            assert f.classnames() == {"tree;1": "TTree"}
            tree = f["tree"]
            data_branches = [k for k in tree.keys() if k != "npart"]
            assert sorted(data_branches) == sorted(expected)
            arrays = tree.arrays(list(expected))
            for name, typ in expected.items():
                assert str(arrays[name].type).split(" * ", 1)[1] == typ, name


def test_same_seed_gives_identical_arrays_for_any_worker_count(small_runs: tuple[list[Path], list[Path]]) -> None:
    a, b = small_runs
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b, strict=True):
        xa, xb = uproot.open(pa)["tree"].arrays(), uproot.open(pb)["tree"].arrays()
        for field in xa.fields:
            assert ak.all(ak.ravel(xa[field] == xb[field])), f"{pa.name}:{field} differs"


def test_different_seed_gives_different_jets(tmp_path: Path, small_runs: tuple[list[Path], list[Path]]) -> None:
    other = generate_dataset(
        classes="Zqq", jets_per_class=6, jets_per_file=6, out_dir=tmp_path, seed=778, progress=False
    )
    same_name = next(p for p in small_runs[0] if p.name == other[0].name)
    pt_a = uproot.open(same_name)["tree"]["jet_pt"].array(library="np")
    pt_b = uproot.open(other[0])["tree"]["jet_pt"].array(library="np")
    assert not np.array_equal(pt_a, pt_b)


def test_jet_content_is_consistent(small_runs: tuple[list[Path], list[Path]]) -> None:
    """Window, one-hot labels, pT ordering, deta/dphi w.r.t. the jet axis, and finite weaver inputs."""
    cfg = yaml.safe_load(CONFIG.read_text())
    for path in small_runs[0]:
        x = uproot.open(path)["tree"].arrays()
        assert ak.all((x.jet_pt > 500) & (x.jet_pt < 1000) & (abs(x.jet_eta) < 2.0))
        onehot = sum(ak.values_astype(x[f"label_{n}"], np.int32) for n in LABELS)
        assert ak.all(onehot == 1)
        pt = np.hypot(x.part_px, x.part_py)
        assert ak.all(pt[:, :-1] >= pt[:, 1:])
        assert ak.all(ak.num(x.part_px) == x.jet_nparticles)
        eta = np.arcsinh(x.part_pz / pt)
        assert np.allclose(ak.flatten(eta - x.jet_eta), ak.flatten(x.part_deta), atol=1e-4)
        assert ak.all(abs(x.part_dphi) <= np.pi)
        # anti-kT R=0.8 works in rapidity: a few soft massive particles lie slightly beyond 0.8 in (eta, phi)
        assert np.mean(ak.to_numpy(ak.flatten(np.hypot(x.part_deta, x.part_dphi) > 0.8))) < 0.05
        # exactly one particle-ID flag per particle; charge only on tracks; IP only on tracks
        flags = x.part_isChargedHadron + x.part_isNeutralHadron + x.part_isPhoton + x.part_isElectron + x.part_isMuon
        assert ak.all(flags == 1)
        is_track = (x.part_isChargedHadron + x.part_isElectron + x.part_isMuon) == 1
        assert ak.all((x.part_charge != 0) == is_track)
        assert ak.all((x.part_d0err > 0) == is_track) and ak.all(x.part_d0val[~is_track] == 0)
        # the data config's derived variables are finite on these files
        env = {k: x[k] for k in x.fields}
        for name, formula in cfg["new_variables"].items():
            env[name] = eval(formula, {"np": np, "ak": ak}, env)  # noqa: S307 - formulas from our own YAML
            assert np.all(np.isfinite(ak.to_numpy(ak.flatten(env[name], axis=None)))), name


def test_resume_keeps_complete_files_and_replaces_broken_ones(tmp_path: Path) -> None:
    kw = dict(classes=["Zqq"], jets_per_class=8, jets_per_file=4, out_dir=tmp_path, seed=5, progress=False)
    first = generate_dataset(**kw)
    good, broken = first
    os.utime(good, (1_000_000_000, 1_000_000_000))
    before = good.stat().st_mtime_ns
    reference = uproot.open(broken)["tree"]["jet_pt"].array(library="np")
    broken.write_bytes(b"not a ROOT file")
    second = generate_dataset(**kw)
    assert second == first
    assert good.stat().st_mtime_ns == before
    assert np.array_equal(uproot.open(broken)["tree"]["jet_pt"].array(library="np"), reference)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(classes="QCD,Foo"), "unknown class"),
        (dict(classes=["Hbb", "bad"]), "valid: all, QCD, Hbb"),
        (dict(classes=""), "no classes"),
        (dict(jets_per_class=0), "jets_per_class"),
        (dict(jets_per_file=-5), "jets_per_file"),
        (dict(workers=0), "workers"),
        (dict(pt_range=(1000.0, 500.0)), "pt_range"),
        (dict(pt_range=(-1.0, 500.0)), "pt_range"),
        (dict(eta_max=0.0), "eta_max"),
        (dict(eta_max=4.0), "eta_max"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_input_raises_clear_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = dict(classes="QCD", jets_per_class=5, out_dir=tmp_path, seed=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate_dataset(**args)
    assert not any(tmp_path.glob("*.root"))


def test_parse_classes_all_and_comma_string() -> None:
    assert parse_classes("all") == list(CLASSES)
    assert parse_classes(" Tbl, Hbb ,Tbl") == ["Tbl", "Hbb"]


def test_cli_reports_unknown_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--classes", "QCD,Nope", "--jets-per-class", "3", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "unknown class(es) Nope" in capsys.readouterr().err
