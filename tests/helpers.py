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


NETWORKS_DIR = REPO_ROOT / "networks"
_FAMILIES = {"part_family": "part", "track_family": "tracks"}


def network_family(path: Path) -> str:
    """'part' (jet ParT family: any attention kind), 'tracks' (hit regression) or the file's stem (its own model),
    read from how the network config built its ``get_model`` (``weaver_ext.network_config``)."""

    from profiling.loading import import_network_config

    module = import_network_config(path, name=f"_discover_{path.stem}")
    return _FAMILIES.get(module.get_model.__qualname__.split(".")[0], path.stem)


def discover_networks(family: str | None = None) -> list[str]:
    """File names of every network config in networks/ (of one family when given): tests parametrize over these,
    so a new network config is tested without editing a list."""
    paths = sorted(NETWORKS_DIR.glob("*.py"))
    return [p.name for p in paths if family is None or network_family(p) == family]


# what the tests build each family with: the data config it reads and small -o options (Python values)
FAMILY_DATA_CONFIGS = {"part": REPO_ROOT / "data" / "JetClass" / "JetClass_kin.yaml",
                       "particlenet": REPO_ROOT / "data" / "JetClass" / "JetClass_kin.yaml",
                       "tracks": REPO_ROOT / "data" / "Tracks" / "tracks.yaml"}
FAMILY_TINY_OPTIONS = {
    "part": {"num_layers": 1, "num_cls_layers": 1, "embed_dims": [16, 16], "pair_embed_dims": [8], "num_heads": 2},
    "particlenet": {"conv_params": [(4, (8, 8))], "fc_params": [(8, 0.1)]},
    "tracks": {"num_layers": 1, "embed_dims": [16, 16], "pair_embed_dims": [8], "num_heads": 2},
}


def family_setup(network: str) -> tuple[str, Path, dict]:
    """(family, data config, tiny options) of a network config file name; a family without an entry is an error
    that asks for one, so a new kind of network config cannot slip through the discovered tests untested."""
    family = network_family(NETWORKS_DIR / network)
    if family not in FAMILY_TINY_OPTIONS:
        raise KeyError(f"tests/helpers.py: add {family!r} (networks/{network}) to FAMILY_TINY_OPTIONS and "
                       "FAMILY_DATA_CONFIGS")
    return family, FAMILY_DATA_CONFIGS[family], dict(FAMILY_TINY_OPTIONS[family])
