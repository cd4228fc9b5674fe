"""Write and inspect JetClass-layout ROOT files (a TTree named ``tree`` that weaver reads).

uproot writes an RNTuple for ``f["tree"] = {...}``, which weaver cannot read, so the tree is declared with
``mktree`` and filled with ``extend``. Jagged branches are built with ``ak.unflatten`` of float32/int32 flat
arrays so that their types are exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from data.pythia_jets import JET_FLOAT_BRANCHES, PARTICLE_FLOAT_BRANCHES, PARTICLE_INT_BRANCHES, JetBlock

TREE_NAME = "tree"
LABELS = ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")
LABEL_BRANCHES = tuple(f"label_{name}" for name in LABELS)
# the counter branch shared by all part_* branches
COUNTER_BRANCH = "npart"


def expected_branch_types() -> dict[str, str]:
    """Branch name -> awkward type string of every data branch of a JetClass-layout file."""
    out: dict[str, str] = {}
    out.update({b: "var * float32" for b in PARTICLE_FLOAT_BRANCHES})
    out.update({b: "var * int32" for b in PARTICLE_INT_BRANCHES})
    out.update({b: "bool" for b in LABEL_BRANCHES})
    out.update({b: "float32" for b in JET_FLOAT_BRANCHES})
    return out


def block_to_arrays(block: JetBlock, label: str) -> dict[str, ak.Array | np.ndarray]:
    """Branch arrays of one file: jagged part_* (float32/int32), one-hot bool labels, float32 jet scalars."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; valid: {', '.join(LABELS)}")
    counts = np.asarray(block.counts, dtype=np.int64)
    part: dict[str, ak.Array] = {}
    for b in PARTICLE_FLOAT_BRANCHES:
        part[b.removeprefix("part_")] = ak.unflatten(np.asarray(block.particles[b], dtype=np.float32), counts)
    for b in PARTICLE_INT_BRANCHES:
        part[b.removeprefix("part_")] = ak.unflatten(np.asarray(block.particles[b], dtype=np.int32), counts)
    arrays: dict[str, ak.Array | np.ndarray] = {"part": ak.zip(part)}
    n = len(counts)
    for name in LABELS:
        arrays[f"label_{name}"] = np.full(n, name == label, dtype=np.bool_)
    for b in JET_FLOAT_BRANCHES:
        arrays[b] = np.asarray(block.jets[b], dtype=np.float32)
    return arrays


def write_jet_file(path: str | Path, block: JetBlock, label: str) -> Path:
    """Write one JetClass-layout file atomically: to a hidden temporary name, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    arrays = block_to_arrays(block, label)
    types = {k: v.type.content if isinstance(v, ak.Array) else v.dtype for k, v in arrays.items()}
    with uproot.recreate(tmp) as f:
        tree = f.mktree(
            TREE_NAME,
            types,
            counter_name=lambda counted: COUNTER_BRANCH,
            field_name=lambda outer, inner: f"{outer}_{inner}",
        )
        tree.extend(arrays)
    os.replace(tmp, path)
    return path


def count_entries(path: str | Path) -> int | None:
    """Number of entries of the file's TTree, or None when the file is missing, unreadable or not a TTree."""
    try:
        with uproot.open(path) as f:
            obj = f.get(TREE_NAME)
            if not isinstance(obj, uproot.TTree):
                return None
            return int(obj.num_entries)
    except Exception:  # noqa: BLE001 - any unreadable file counts as incomplete
        return None


def read_jets(paths: Sequence[str | Path], branches: Sequence[str] | None = None) -> ak.Array:
    """Read branches of several JetClass-layout files into one awkward array."""
    parts = []
    for p in paths:
        with uproot.open(p) as f:
            parts.append(f[TREE_NAME].arrays(branches))
    return ak.concatenate(parts) if parts else ak.Array([])
