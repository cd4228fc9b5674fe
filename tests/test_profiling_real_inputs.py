"""``python -m profiling.forward`` on inputs no one here wrote, and on broken files, through the real CLI.

- someone else's network config (the Sophon config, wrapping weaver-core's ParT) on the JetClass-II parquet;
- the published ParticleNet weights with default options (its kNN needs 17 slots; the sweep starts at 16);
- every config in networks/ with default options;
- files without a non-input branch (profiled), and truncated, empty or input-less files (one line, no traceback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uproot

from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT, SHARED_MODELS

KIN = JETCLASS_CONFIGS / "JetClass_kin.yaml"
JC2 = REPO_ROOT.parent / "shared" / "reference" / "jetclass2"
FULL_REPORT = {"report.json", "report.md", "trace.json", "throughput_vs_batch.png", "latency_vs_multiplicity.png",
               "op_breakdown.png"}
QUICK = ["--min-run-time", "0.02", "--ab-rounds", "2", "--threads", "1", "--quiet"]
TINY_PARTICLENET = ["-o", "conv_params", "[(4, (8, 8))]", "-o", "fc_params", "[(8, 0.1)]"]


def profile(*args: object, out: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess: everything it prints, weaver's and awkward's output included, is captured."""
    cmd = [sys.executable, "-m", "profiling.forward", *map(str, args), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_sophon_config_on_jetclass2_parquet(tmp_path: Path) -> None:
    out = tmp_path / "sophon"
    proc = profile("--network-config", JC2 / "example_ParticleTransformer_sophon.py",
                   "--data-config", JC2 / "JetClassII_full.yaml", "-o", "num_classes", "188",
                   "-o", "fc_params", "[(512,0.1)]", "--input", JC2 / "JetClassII_example.parquet",
                   "--batch-sizes", "1,8", *QUICK, out=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert FULL_REPORT <= {p.name for p in out.iterdir()}
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["model_class"] == "ParticleTransformerSophonWrapper"
    assert rep["predictions"]["num_classes"] == 188
    assert rep["inputs"]["source"].startswith("8 real jets from 1 file(s)")
    read = (out / "inputs" / "profiling_inputs.yaml").read_text()
    assert "jet_tau1" not in read and "reweight" not in read  # observers and weights are never read


@pytest.mark.parametrize("batch_sizes", ["1,8", pytest.param("1,64", marks=pytest.mark.slow)])
def test_published_particlenet_default_options(tmp_path: Path, jet_files: list[Path], batch_sizes: str) -> None:
    """The issue's command: default options and multiplicities (16 < k + 1 = 17), trained vs random weights."""
    out = tmp_path / "pn"
    proc = profile("--network-config", REPO_ROOT / "networks" / "particlenet.py", "--data-config", KIN,
                   "--weights", SHARED_MODELS / "ParticleNet_kin.pt", "--device", "cpu", "--batch-sizes",
                   batch_sizes, "--input", jet_files[0].parent / "*.root", *QUICK, out=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert FULL_REPORT | {"trained_vs_untrained.png"} <= {p.name for p in out.iterdir()}
    rep = json.loads((out / "report.json").read_text())
    sweep = {r["multiplicity"]: r["slots"] for r in rep["latency_vs_multiplicity"]}
    assert sweep == {16: 17, 32: 32, 64: 64, 128: 128}
    assert any("inputs padded to 17 slots" in n for n in rep["multiplicity_notes"])
    assert rep["compare"]["A"]["weights"].endswith("ParticleNet_kin.pt") and rep["compare"]["B"]["weights"] == "random"
    assert "Trained vs other weights" in (out / "report.md").read_text()


NETWORKS = sorted((REPO_ROOT / "networks").glob("*.py"))


@pytest.mark.parametrize("network", NETWORKS, ids=lambda p: p.stem)
def test_every_network_config_with_default_options(tmp_path: Path, jet_files: list[Path], track_files,
                                                   network: Path) -> None:
    data, config = track_files if network.name == "track_transformer.py" else (jet_files[0].parent / "*.root", KIN)
    proc = profile("--network-config", network, "--data-config", config, "--input", data, "--batch-sizes", "1,4",
                   *QUICK, out=tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [r["multiplicity"] for r in rep["latency_vs_multiplicity"]] == [16, 32, 64, 128]  # the defaults
    assert not [n for n in rep["multiplicity_notes"] if "skipped" in n]


@pytest.fixture(scope="module")
def track_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A few muon-track events (cheap detector) and the tracks data config."""
    from data.generate_tracks import generate_tracks

    out = tmp_path_factory.mktemp("tracks")
    files = generate_tracks(events=8, out_dir=out, seed=3, workers=1, events_per_file=8, progress=False,
                            n_pmts=3000, min_hits=50)
    return files[0], REPO_ROOT / "data" / "Tracks" / "tracks.yaml"


def _copy_without(src: Path, dst: Path, drop: set[str]) -> Path:
    """The same jets with some branches left out (a file that follows another schema)."""
    arr = uproot.open(src)["tree"].arrays()
    keep = [f for f in arr.fields if f not in drop]
    with uproot.recreate(dst) as out:
        tree = out.mktree("tree", {k: arr[k].type.content for k in keep})
        tree.extend({k: arr[k] for k in keep})
    return dst


def test_file_without_non_input_branches_is_profiled(tmp_path: Path, jet_files: list[Path]) -> None:
    """jet_tau1..4 and the aux branches are observers at most, labels optional: the profiler runs without them."""
    labels = {f"label_{c}" for c in ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")}
    f = _copy_without(jet_files[0], tmp_path / "no_tau.root",
                      {"jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4", "jet_sdmass", "aux_truth_match", *labels})
    proc = profile("--network-config", REPO_ROOT / "networks" / "particlenet.py", "--data-config", KIN,
                   "--input", f, "--batch-sizes", "2", "--multiplicities", "16", *TINY_PARTICLENET, *QUICK,
                   out=tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [n.split(":")[0] for n in rep["inputs"]["notes"]] == ["labels not read"]
    assert "labels not read" in (tmp_path / "run" / "report.md").read_text()


def _truncated(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


BROKEN = {
    "truncated": lambda src, dst: _truncated(src, dst),
    "empty": lambda src, dst: (dst.write_bytes(b""), dst)[1],
    "missing_input_branch": lambda src, dst: _copy_without(src, dst, {"part_deta"}),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_file_is_one_line_without_traceback(tmp_path: Path, jet_files: list[Path], kind: str) -> None:
    bad = BROKEN[kind](jet_files[0], tmp_path / f"{kind}.root")
    proc = profile("--network-config", REPO_ROOT / "networks" / "particlenet.py", "--data-config", KIN,
                   "--input", bad, "--batch-sizes", "2", *TINY_PARTICLENET, *QUICK, out=tmp_path / "run")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:"), output
    if kind == "missing_input_branch":
        assert "'part_deta'" in lines[0]


def test_jetclass_configs_match_published_observers() -> None:
    """Our data configs read nothing a published-schema file lacks: observers as in the published configs."""
    import yaml

    published = REPO_ROOT.parent / "shared" / "reference" / "particle_transformer" / "data" / "JetClass"
    for name in ("JetClass_full.yaml", "JetClass_kin.yaml", "JetClass_kinpid.yaml"):
        ours, theirs = (yaml.safe_load((d / name).read_text()) for d in (JETCLASS_CONFIGS, published))
        assert ours["observers"] == theirs["observers"], name
        assert ours["inputs"] == theirs["inputs"] and ours["labels"] == theirs["labels"], name
        assert ours["new_variables"] == theirs["new_variables"], name


def test_input_plan_reads_labels_only_where_every_file_has_them(tmp_path: Path, jet_files: list[Path]) -> None:
    import yaml

    from profiling import loading

    unlabelled = _copy_without(jet_files[0], tmp_path / "unlabelled.root", {"label_QCD", "label_Tbl"})
    plan = loading.plan_inputs(KIN, [str(jet_files[1])], work_dir=tmp_path / "a")
    assert plan.notes == () and yaml.safe_load(plan.data_config.read_text())["labels"]["type"] == "simple"
    plan = loading.plan_inputs(KIN, [str(jet_files[1]), str(unlabelled)], work_dir=tmp_path / "b")
    assert plan.notes == (f"labels not read: 1 of 2 file(s) lack branch(es) label_QCD, label_Tbl (first: "
                          f"{unlabelled})",)
    read = yaml.safe_load(plan.data_config.read_text())
    assert read["labels"] == {"type": "custom", "value": {loading.NO_LABEL: "np.zeros(len(jet_energy)) - 1"}}
    assert read["observers"] == []
    jets = loading.load_real_jets([jet_files[1], unlabelled], plan.data_config, max_jets=50)
    assert len(jets.labels) == 50 and set(jets.labels) == {-1}  # no labels: the profiler reports none
