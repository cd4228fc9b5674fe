"""``weaver --compile`` with our ParT: training on CPU stops with one line (why, and what to do); ``--predict``
accepts the flag (weaver 0.5.3 compiles training only) and gives the scores of a run without it."""

from __future__ import annotations

import subprocess

import numpy as np
import uproot

from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import WEAVER, run_weaver
from weaver_ext.part import COMPILE_TRAINING_ERROR

NETWORK = REPO_ROOT / "networks" / "part.py"
DATA_CONFIG = JETCLASS_CONFIGS / "JetClass_kin.yaml"
TINY = ["-o", "num_layers", "1", "-o", "num_cls_layers", "1", "-o", "embed_dims", "(16,16)", "-o", "pair_embed_dims",
        "(8,)", "-o", "num_heads", "2"]
LABELS = ["QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl"]


def _train_args(jet_files, run, *extra):
    return ["--data-train", *jet_files, "--data-config", DATA_CONFIG, "--network-config", NETWORK, *TINY,
            "--model-prefix", run / "net", "--num-epochs", "1", "--batch-size", "32", "--gpus", "", "--num-workers",
            "0", "--fetch-step", "1", "--optimizer", "adamw", "--start-lr", "1e-3", *extra]


def test_compiled_training_on_cpu_ends_with_one_line(jet_files, tmp_path):
    proc = subprocess.run([WEAVER, *map(str, _train_args(jet_files, tmp_path, "--compile"))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {COMPILE_TRAINING_ERROR}"


def test_predict_with_compile_gives_the_scores_without_it(jet_files, tmp_path):
    run_weaver(_train_args(jet_files, tmp_path), cwd=tmp_path)
    scores = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / f"pred{len(flag)}.root"
        run_weaver(["--predict", "--data-test", *jet_files[:3], "--data-config", DATA_CONFIG, "--network-config",
                    NETWORK, *TINY, "--model-prefix", tmp_path / "net_epoch-0_state.pt", "--gpus", "",
                    "--num-workers", "0", "--batch-size", "64", "--predict-output", out, *flag], cwd=tmp_path)
        events = uproot.open(out)["Events"].arrays(library="np")
        scores[bool(flag)] = np.stack([events[f"score_label_{c}"] for c in LABELS], axis=1)
    assert scores[True].shape == scores[False].shape and len(scores[True]) > 0
    assert np.abs(scores[True] - scores[False]).max() <= 1e-5
