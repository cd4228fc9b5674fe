"""Preflight input checker (``data/check.py``): one exact line per bad file, exit codes, NaN/inf policy.

Bad files are real generated Pythia files (the ``jet_files`` fixture) copied with uproot and damaged one way each.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from data.check import ConfigError, check_files, load_data_config, main, requirements
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT

FULL = JETCLASS_CONFIGS / "JetClass_full.yaml"
KIN = JETCLASS_CONFIGS / "JetClass_kin.yaml"
N_FULL = 36  # raw branches JetClass_full.yaml needs: 17 part_*, 10 labels, 9 jet-level (jet_pt/energy, observers)
AUX = {"aux_genpart_eta", "aux_genpart_phi", "aux_genpart_pid", "aux_genpart_pt", "aux_truth_match"}


def _arrays(src: Path) -> dict[str, ak.Array]:
    tree = uproot.open(src)["tree"]
    arrays = tree.arrays(library="ak")
    return {k: arrays[k] for k in arrays.fields if k != "npart"}


def _write(dst: Path, arrays: dict[str, Any]) -> Path:
    """A TTree ``tree`` with these branches (jagged ones get uproot's own ``n<name>`` counters)."""
    arrays = {k: v if isinstance(v, ak.Array) else ak.Array(v) for k, v in arrays.items()}
    with uproot.recreate(dst) as f:
        tree = f.mktree("tree", {k: v.type.content for k, v in arrays.items()})
        tree.extend(arrays)
    return dst


def _copy(src: Path, dst: Path, **changes: Any) -> Path:
    """Copy a JetClass-layout file; ``name=None`` drops a branch, ``name=array`` replaces (or adds) it."""
    arrays = _arrays(src)
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    return _write(dst, arrays)


def _with_values(jagged: ak.Array, index: int, value: float) -> ak.Array:
    """``jagged`` with its ``index``-th flat value replaced (float32 kept)."""
    flat = ak.to_numpy(ak.flatten(jagged)).copy()
    flat[index] = value
    return ak.unflatten(flat, ak.num(jagged))


def _check(paths: list[Path], config: Path = FULL, **kwargs: Any) -> list[str]:
    return check_files(paths, config, progress=False, **kwargs).lines()


@pytest.fixture(scope="module")
def good(jet_files) -> Path:
    return Path(jet_files[0])


# ---------------------------------------------------------------------------------------------- requirements


def test_needed_branches_are_weavers_own_resolution(good):
    """Exactly the data branches of a generated file but its aux truth branches (new_variables resolved; observers
    as in the published config); the expected structure per role."""
    req = requirements(load_data_config(FULL))
    file_branches = set(uproot.open(good)["tree"].keys()) - {"npart"} - AUX
    assert set(req.branches) == file_branches and len(req.branches) == N_FULL
    kinds = {name: need.kind for name, need in req.branches.items()}
    assert kinds["part_px"] == "particle" and kinds["part_deta"] == "particle"
    assert kinds["part_d0val"] == "particle"  # only behind part_d0 = np.tanh(part_d0val), a padded input
    assert kinds["label_QCD"] == "jet"
    assert kinds["jet_pt"] == "any"  # used in part_logptrel (broadcast) and as an observer
    assert not {"part_pt", "part_mask", "part_pt_log"} & set(req.branches)  # defined by new_variables


def test_selection_and_mode_change_the_needed_branches(tmp_path):
    cfg = yaml.safe_load(KIN.read_text())
    cfg["selection"] = "(jet_sdmass > 0) & (jet_tau1 >= 0)"
    cfg["test_time_selection"] = "aux_truth_match >= 0"
    cfg["observers"] = ["jet_eta"]
    path = tmp_path / "sel.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_data_config(path)
    train, test = requirements(config, mode="train").branches, requirements(config, mode="test").branches
    assert {"jet_sdmass", "jet_tau1"} <= set(train) and not {"jet_eta", "aux_truth_match"} & set(train)
    assert {"jet_eta", "aux_truth_match"} <= set(test) and not {"jet_sdmass", "jet_tau1"} & set(test)
    assert "part_d0val" not in train  # kin inputs do not use it


@pytest.mark.parametrize("text,expected", [(None, "data config not found"), ("inputs: [", "not valid YAML"),
                                           ("- 1\n- 2\n", "must be a YAML mapping"),
                                           ("foo: 1\n", "weaver's DataConfig rejects it: KeyError")])
def test_unusable_data_config_is_a_config_error(tmp_path, good, text, expected):
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        check_files([good], path, progress=False)


# ---------------------------------------------------------------------------------------------- bad files


def test_clean_files_pass(jet_files):
    report = check_files(jet_files[:2], FULL, progress=False)
    assert report.ok and not report.problems
    assert report.lines()[0] == f"{jet_files[0]}: OK (40 entries, {N_FULL} branches)"
    assert report.lines()[-1] == f"OK: 2 file(s), 80 entries, {N_FULL} needed branches; 0 problem(s) in 0 file(s), " \
                                 "0 warning(s)"
    px = report.files[0].branches["part_px"]
    assert px.jagged and px.type == "var * float32" and px.values > 40 and px.nonfinite == 0


def test_missing_branch(good, tmp_path):
    path = _copy(good, tmp_path / "missing.root", part_deta=None, label_Tbl=None)
    assert _check([path])[0] == (f"{path}: missing branch(es) 'label_Tbl', 'part_deta' in TTree 'tree' "
                                 f"(2 of {N_FULL} needed)")


def test_string_branch(good, tmp_path):
    n = uproot.open(good)["tree"].num_entries
    path = _copy(good, tmp_path / "string.root", jet_pt=[f"pt{i}" for i in range(n)])
    assert _check([path])[0] == f"{path}: branch 'jet_pt' has type 'string' (in the file: 'char*'), expected numbers " \
                                "(bool, int or float)"


def test_int_branch_is_accepted(good, tmp_path):
    """weaver casts every input to float32: an int32 ``part_charge`` (float in JetClass) is fine."""
    charge = _arrays(good)["part_charge"]
    as_int = ak.values_astype(charge, np.int32)
    assert ak.all(as_int == charge)
    path = _copy(good, tmp_path / "int.root", part_charge=as_int)
    report = check_files([path], FULL, progress=False)
    assert report.ok and report.files[0].branches["part_charge"].type == "var * int32"


def test_flat_branch_where_weaver_pads_per_particle(good, tmp_path):
    px = _arrays(good)["part_px"]
    path = _copy(good, tmp_path / "flat.root", part_px=ak.to_numpy(px[:, 0]))
    assert _check([path])[0] == (
        f"{path}: branch 'part_px' has type 'float32', expected a jagged per-particle branch (input group "
        "'pf_vectors' pads it to 128); weaver would read each jet as a single particle")


def test_jagged_branch_where_a_scalar_is_expected(good, tmp_path):
    label = _arrays(good)["label_QCD"]
    one_each = ak.unflatten(ak.to_numpy(label), np.ones(len(label), dtype=np.int64))  # var * bool, 1 per jet
    path = _copy(good, tmp_path / "jagged_label.root", label_QCD=one_each)
    assert _check([path])[0] == (f"{path}: branch 'label_QCD' has type 'var * bool', expected a flat per-jet branch "
                                 "(a simple label)")


def test_different_particle_counts_in_one_input_group(good, tmp_path):
    dphi = _arrays(good)["part_dphi"]
    shorter = ak.concatenate([dphi[:1, :-1], dphi[1:]])  # jet 0 loses its last particle in part_dphi only
    path = _copy(good, tmp_path / "counts.root", part_dphi=shorter)
    assert f"{path}: branches 'part_deta' and 'part_dphi' (input group 'pf_points') have different particle counts " \
           "in 1 of 40 entries" in _check([path])


def test_labels_not_one_hot(good, tmp_path):
    arrays = _arrays(good)
    set_label = next(k for k in arrays if k.startswith("label_") and ak.all(arrays[k]))
    other = "label_QCD" if set_label != "label_QCD" else "label_Hbb"
    path = _copy(good, tmp_path / "labels.root", **{other: np.ones(len(arrays[other]), dtype=bool)})
    assert _check([path])[0] == (f"{path}: labels are not one-hot: 0 entries have no label set, 40 have more than one "
                                 "(weaver's training stops with 'Inconsistent label definition')")
    assert check_files([path], FULL, mode="test", progress=False).ok  # --predict does not need one-hot labels


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_file(good, tmp_path, fraction):
    path = tmp_path / f"trunc{fraction}.root"
    data = good.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    (line, summary) = _check([path])
    assert line.startswith(f"{path}: ") and "(truncated or corrupt" in line and "\n" not in line
    assert summary.startswith("FAILED: 1 file(s)")


def test_empty_missing_and_not_root_files(tmp_path):
    empty, text, missing = tmp_path / "empty.root", tmp_path / "text.root", tmp_path / "nope.root"
    empty.write_bytes(b"")
    text.write_text("not a ROOT file\n" * 10)
    lines = _check([empty, text, missing, tmp_path / "table.csv"])
    assert lines[0] == f"{empty}: file is empty (0 bytes)"
    assert lines[1].startswith(f"{text}: cannot open as a ROOT file (truncated or corrupt?): ValueError: ")
    assert lines[2] == f"{missing}: file not found"
    assert lines[3] == f"{tmp_path / 'table.csv'}: weaver reads only .root, .h5, .parquet, .awkd files, not '.csv'"


def test_rntuple_zero_entries_and_wrong_tree(good, tmp_path):
    arrays = _arrays(good)
    rntuple = tmp_path / "rntuple.root"
    with uproot.recreate(rntuple) as f:
        f["tree"] = {"jet_pt": np.asarray(arrays["jet_pt"])}
    empty_tree = _write(tmp_path / "zero.root", {k: v[:0] for k, v in arrays.items()})
    lines = _check([rntuple, empty_tree, good], treename=None) + _check([good], treename="events")
    assert lines[0].startswith(f"{rntuple}: 'tree' is a ROOT::RNTuple, not a TTree: weaver reads only TTrees")
    assert lines[1] == f"{empty_tree}: TTree 'tree' has 0 entries"
    assert lines[-2] == f"{good}: no TTree 'events' (TTrees in the file: tree)"


# ---------------------------------------------------------------------------------------------- NaN / inf policy


@pytest.fixture(scope="module")
def nonfinite_file(good, tmp_path_factory) -> Path:
    arrays = _arrays(good)
    deta = _with_values(_with_values(arrays["part_deta"], 0, np.nan), 5, np.nan)
    px = _with_values(_with_values(arrays["part_px"], 3, np.inf), 7, -np.inf)
    return _copy(good, tmp_path_factory.mktemp("nonfinite") / "nonfinite.root", part_deta=deta, part_px=px)


def test_nonfinite_values_are_rejected_with_counts(nonfinite_file):
    report = check_files([nonfinite_file], FULL, progress=False)
    n = report.files[0].branches["part_px"].values
    assert not report.ok
    assert [p.line() for p in report.problems] == [
        f"{nonfinite_file}: branch 'part_deta' has 2 non-finite value(s) of {n} (NaN 2, +inf 0, -inf 0)",
        f"{nonfinite_file}: branch 'part_px' has 2 non-finite value(s) of {n} (NaN 0, +inf 1, -inf 1)",
    ]


def test_allow_nonfinite_turns_them_into_warnings(nonfinite_file):
    report = check_files([nonfinite_file], FULL, allow_nonfinite=True, progress=False)
    assert report.ok and len(report.problems) == 2
    assert report.lines()[0].startswith(f"{nonfinite_file}: warning: branch 'part_deta' has 2 non-finite")
    assert report.summary().endswith("0 problem(s) in 0 file(s), 2 warning(s)")


def test_max_entries_and_chunked_reading_agree(nonfinite_file):
    """Reading in chunks of 7 entries counts the same; --max-entries 1 sees only the first jet's values."""
    whole = check_files([nonfinite_file], FULL, progress=False).files[0].branches
    chunked = check_files([nonfinite_file], FULL, step=7, progress=False).files[0].branches
    assert whole == chunked
    first = check_files([nonfinite_file], FULL, max_entries=1, progress=False).files[0]
    assert first.entries == 1 and first.branches["part_deta"].nan >= 1


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_in_a_subprocess_prints_one_line_per_problem(good, nonfinite_file, tmp_path):
    empty = tmp_path / "empty.root"
    empty.write_bytes(b"")
    cmd = [sys.executable, "-m", "data.check", str(good), str(empty), str(nonfinite_file), "-c", str(FULL)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"{good}: OK (40 entries, {N_FULL} branches)"
    assert lines[1] == f"{empty}: file is empty (0 bytes)"
    assert lines[2].startswith(f"{nonfinite_file}: branch 'part_deta' has 2 non-finite value(s)")
    assert lines[-1] == f"FAILED: 3 file(s), 80 entries, {N_FULL} needed branches; 3 problem(s) in 2 file(s), " \
                        "0 warning(s)"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_cli_exit_codes(good, nonfinite_file, tmp_path, capsys):
    assert main([str(good), "-c", str(FULL), "--quiet", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().startswith("OK: 1 file(s)")
    assert main([str(nonfinite_file), "-c", str(FULL), "--allow-nonfinite", "--no-progress"]) == 0
    assert main([str(good), "-c", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.yaml'}: data config not found"
    with pytest.raises(SystemExit) as exc:
        main([str(good), "-c", str(FULL), "--max-entries", "0"])
    assert exc.value.code == 2
