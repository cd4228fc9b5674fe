"""Small test utilities shared by several test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
WEAVER = str(Path(sys.executable).with_name("weaver"))


def weaver_batch(files: Sequence[Path], data_config: Path, *, max_jets: int = 10_000) -> dict[str, torch.Tensor]:
    """All jets of ``files`` as weaver's own data pipeline preprocesses them, plus their labels as ``_label_``."""
    from profiling.loading import load_real_jets

    jets = load_real_jets(files, data_config, max_jets=max_jets)
    return {**jets.inputs, "_label_": torch.as_tensor(jets.labels)}


def run_weaver(args: Sequence[str], *, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real ``weaver`` CLI in a subprocess; fail the test with its output tail when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run([WEAVER, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise AssertionError(f"weaver {' '.join(map(str, args))} failed (rc={proc.returncode}):\n{tail}")
    return proc
