"""Real ``weaver`` runs on label sets other than JetClass's ten simple labels.

- JetClass-II (../shared/reference/jetclass2): 100 real Delphes jets as parquet, the published data config with
  ``labels: type: custom`` (188 classes, ``-o num_classes 188``). Its ``weights:`` section is dropped: weaver's
  reweighting histograms crash on 100 jets (``zero-size array to reduction operation minimum``).
- TopLandscape layout (published ``top_kin.yaml``: labels ``jet_isTop``/``jet_isQCD`` from a ``label`` branch),
  written from generated top and QCD jets; ``evaluation.metrics`` quotes 1/eB at eS = 50% and 30%.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot
import yaml

from evaluation import metrics
from profiling import loading
from tests.conftest import REPO_ROOT
from tests.helpers import run_weaver

SHARED = REPO_ROOT.parent / "shared" / "reference"
JC2 = SHARED / "jetclass2"
TOP_KIN = SHARED / "particle_transformer" / "data" / "TopLandscape" / "top_kin.yaml"
TINY = {"num_layers": "1", "num_cls_layers": "1", "embed_dims": "(16,16)", "pair_embed_dims": "(8,)",
        "num_heads": "2"}
SELECTION = "(jet_pt > 200) & (jet_pt < 2500) & (jet_sdmass > 20) & (jet_sdmass < 500)"  # the published config's
NETWORKS = {"part": ("part.py", {}),
            "dsa_part": ("dsa_part.py", {"dsa_enabled": "True", "dsa_mode": "'topk'", "sparsity_ratio": "0.25"})}


def _opts(opts: dict[str, str]) -> list[str]:
    return [a for k, v in opts.items() for a in ("-o", k, v)]


@pytest.fixture(scope="module")
def jetclass2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The JetClass-II example and its published config without the reweighting section (see module doc)."""
    out = tmp_path_factory.mktemp("jc2")
    options = yaml.safe_load((JC2 / "JetClassII_full.yaml").read_text())
    options["weights"] = None
    config = out / "JetClassII_full_noweights.yaml"
    config.write_text(yaml.safe_dump(options, sort_keys=False))
    return JC2 / "JetClassII_example.parquet", config


# dsa_part's head is ParT's: its 188-class run (35 s) repeats part's, so it runs with the slow tests only
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "dsa_part" else n for n in NETWORKS])
def test_trains_and_predicts_188_jetclass2_classes(jetclass2, tmp_path, name):
    data, config = jetclass2
    network, extra = NETWORKS[name]
    common = ["--data-config", config, "--network-config", REPO_ROOT / "networks" / network,
              *_opts({**TINY, **extra, "num_classes": "188"}), "--gpus", "", "--num-workers", "0"]
    run_weaver(["--data-train", data, *common, "--model-prefix", tmp_path / "net", "--num-epochs", "1",
                "--batch-size", "16", "--start-lr", "1e-3", "--optimizer", "adamw", "--fetch-step", "1",
                "--log-file", tmp_path / "train.log"], cwd=tmp_path)
    assert (tmp_path / "net_epoch-0_state.pt").is_file()
    log = (tmp_path / "train.log").read_text()
    assert np.isfinite(float(log.split("Train AvgLoss: ")[1].split(",")[0]))
    pred = tmp_path / "pred.root"
    run_weaver(["--predict", "--data-test", data, *common, "--model-prefix", tmp_path / "net_epoch-0_state.pt",
                "--batch-size", "32", "--predict-output", pred], cwd=tmp_path)
    events = uproot.open(pred)["Events"].arrays(library="np")
    assert yaml.safe_load(config.read_text())["selection"] == SELECTION
    table = ak.from_parquet(data)
    pt, sdmass = ak.to_numpy(table["jet_pt"]), ak.to_numpy(table["jet_sdmass"])
    passing = (pt > 200) & (pt < 2500) & (sdmass > 20) & (sdmass < 500)  # SELECTION, written out
    assert events["output"].shape == (passing.sum(), 188)  # 188 scores per jet that passes the selection
    np.testing.assert_allclose(events["output"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(events["truth_label"], ak.to_numpy(table["jet_label"])[passing])
    m = metrics.metrics_from_file(pred)
    assert m["n_jets"] == passing.sum() and len(m["classes"]) == 188 and m["label_scheme"] is None
    assert m["accuracy"] == pytest.approx(np.mean(events["output"].argmax(1) == events["truth_label"]))
    assert 0.0 <= m["macro_auc"] <= 1.0


def _toplandscape_file(jet_files: list[Path], path: Path) -> int:
    """Top (TTBar) and QCD (ZJetsToNuNu) generated jets in TopLandscape's layout: ``label`` 1 for top."""
    branches = ["part_px", "part_py", "part_pz", "part_energy", "part_deta", "part_dphi", "jet_pt", "jet_eta",
                "jet_energy"]
    parts = []
    for f in jet_files:
        if f.stem.split("_")[0] in ("TTBar", "ZJetsToNuNu"):
            arr = uproot.open(f)["tree"].arrays(branches)
            parts.append(ak.with_field(arr, np.full(len(arr), int(f.stem.startswith("TTBar"))), "label"))
    table = ak.concatenate(parts)
    with uproot.recreate(path) as out:
        tree = out.mktree("tree", {k: table[k].type.content for k in table.fields})
        tree.extend({k: table[k] for k in table.fields})
    return len(table)


def test_toplandscape_prediction_metrics(jet_files, tmp_path):
    data = tmp_path / "top.root"
    n_jets = _toplandscape_file(jet_files, data)
    torch.manual_seed(0)
    model, _ = loading.build_model(REPO_ROOT / "networks" / "part.py", loading.load_data_config(TOP_KIN),
                                   options={k: eval(v) for k, v in TINY.items()})  # noqa: S307 - literals above
    torch.save(model.state_dict(), tmp_path / "random.pt")
    pred = tmp_path / "pred.root"
    run_weaver(["--predict", "--data-test", data, "--data-config", TOP_KIN, "--network-config",
                REPO_ROOT / "networks" / "part.py", *_opts(TINY), "--model-prefix", tmp_path / "random.pt",
                "--gpus", "", "--num-workers", "0", "--batch-size", "64", "--predict-output", pred], cwd=tmp_path)
    m = metrics.metrics_from_file(pred)
    assert m["label_scheme"] == "TopLandscape" and m["n_jets"] == n_jets
    assert set(m["rejection"]) == {"jet_isTop@0.5", "jet_isTop@0.3"}
    n_top = int(uproot.open(data)["tree"]["label"].array(library="np").sum())
    for key, eff in (("jet_isTop@0.5", 0.5), ("jet_isTop@0.3", 0.3)):
        r = m["rejection"][key]
        assert r["signal_efficiency"] == eff and r["background"] == "jet_isQCD"
        assert (r["n_signal"], r["n_background"]) == (n_top, n_jets - n_top)
        assert r["rejection"] >= 1.0


def test_weaver_without_num_classes_is_one_line(jetclass2, tmp_path):
    """Custom labels without -o num_classes: weaver stops with our one-line error, no traceback."""
    import subprocess

    from tests.helpers import WEAVER

    data, config = jetclass2
    proc = subprocess.run([WEAVER, "--data-train", str(data), "--data-config", str(config), "--network-config",
                           str(REPO_ROOT / "networks" / "part.py"), *_opts(TINY), "--model-prefix", str(tmp_path / "n"),
                           "--num-epochs", "1", "--gpus", "", "--num-workers", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: networks/part.py: the data config has custom labels (truth_label: jet_label), so the class count is "
        "not known: pass -o num_classes N (e.g. 188 for JetClass-II)")
