"""The real weaver CLI reads the generated files with the unchanged JetClass data config (subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import uproot

REPO = Path(__file__).resolve().parents[1]
WEAVER = Path(sys.executable).with_name("weaver")
CONFIG = REPO / "data" / "JetClass" / "JetClass_full.yaml"
BATCH = 16


def test_weaver_io_test_reads_all_classes(jet_files: list[Path], tmp_path: Path) -> None:
    assert len(jet_files) == 10
    config_dir_before = sorted(p.name for p in CONFIG.parent.iterdir())
    cmd = [
        str(WEAVER), "-c", str(CONFIG), "-i", *map(str, jet_files), "--io-test", "--gpus", "",
        "--num-workers", "0", "--batch-size", str(BATCH), "--fetch-step", "1",
        "--model-prefix", str(tmp_path / "model"), "--log-file", str(tmp_path / "weaver.log"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Start running IO test" in out
    # every file is read: weaver's training split is the first 80% of each file
    n_train = sum(int(0.8 * uproot.open(p)["tree"].num_entries) for p in jet_files)
    batches = max(int(m) for m in re.findall(r"(\d+)it \[", out))
    assert abs(batches - n_train / BATCH) <= 1.0, (batches, n_train)
    # all ten labels and all 17 + 2 + 4 + 1 input variables were set up from our branches
    assert "label_names: ('_label_',)" in out
    for var in ("part_d0", "part_dzerr", "part_isMuon", "part_logerel", "part_mask"):
        assert f"('{var}'," in out
    assert sorted(p.name for p in CONFIG.parent.iterdir()) == config_dir_before
