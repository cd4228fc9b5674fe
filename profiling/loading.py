"""Load a weaver network config, its weights and its inputs exactly the way the ``weaver`` CLI does.

The one home of these helpers for the whole repository (profiling, evaluation, scripts, tests):

- ``import_network_config``: a network config module imported by path (weaver's ``import_module``);
- ``load_data_config``: weaver's ``DataConfig`` of a YAML file, every failure a one-line ``data.check.ConfigError``;
- ``parse_network_options`` / ``add_network_option_argument``: the ``-o KEY VALUE`` options, parsed like weaver;
- ``synthetic_inputs`` (random but physical jets pushed through the data config's standardisation / padding
  rules) and ``synthetic_hits`` (random detector hits in data/Tracks/tracks.yaml's layout);
- ``weaver_exe``: the ``weaver`` CLI of this interpreter's environment.

The model comes from ``import_network_config(network_config)`` + ``get_model(data_config, **options)``; real inputs
come from weaver's own ``SimpleIterDataset`` preprocessing of ROOT files.
"""

from __future__ import annotations

import argparse
import ast
import glob
import math
import sys
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import yaml

from weaver_ext.checkpoint import load_checkpoint

__all__ = [
    "CUDA_WARMUP_CALLS", "MIN_WARMUP_CALLS", "NO_LABEL", "InputError", "InputPlan", "LoadedModel", "RealJets",
    "add_network_option_argument", "build_model", "check_device", "count_parameters", "expand_input_files",
    "fmt_si", "import_network_config", "load_data_config", "load_model", "load_real_inputs", "load_real_jets",
    "load_weights", "mask_input_name", "parse_network_options", "plan_inputs", "real_multiplicity",
    "synthetic_hits", "synthetic_inputs", "take_batch", "warm_up", "weaver_exe",
]

# ParT's SequenceTrimmer is inactive during its first 5 forward calls: always warm up past that
MIN_WARMUP_CALLS = 6
CUDA_WARMUP_CALLS = 20


@dataclass
class LoadedModel:
    """A ready-to-run model with the metadata the report needs."""

    model: torch.nn.Module
    model_info: dict[str, Any]
    input_names: list[str]
    weights: str  # path of the loaded state_dict, or "random"
    options: dict[str, Any]


def parse_network_options(pairs: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Parse ``-o KEY VALUE`` pairs with ``ast.literal_eval`` exactly like weaver's ``model_setup``."""
    options: dict[str, Any] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"-o expects KEY VALUE, got {list(pair)}")
        key, value = pair
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(
                f"-o {key} {value!r}: not a Python literal (strings need inner quotes, e.g. \"'sdpa'\")"
            ) from exc
    return options


def add_network_option_argument(parser: argparse.ArgumentParser, *, help: str | None = None) -> None:
    """The ``-o/--network-option KEY VALUE`` argument (repeatable, ``dest='network_option'``) as weaver has it;
    parse its pairs with ``parse_network_options``."""
    parser.add_argument("-o", "--network-option", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help=help or "network option as for weaver (Python literal values, e.g. -o num_layers 2)")


def load_data_config(path: str | Path) -> Any:
    """weaver's ``DataConfig`` as weaver builds the model from it (no observers, no reweighting).

    Any failure (missing file, invalid YAML, rejected by weaver) is a one-line ``data.check.ConfigError`` (a
    ``ValueError``) naming the file.
    """
    from data.check import load_data_config as load_checked

    full = load_checked(path)
    options = {**full.options, "observers": None, "weights": None}
    return type(full)(print_info=False, **options)


def import_network_config(path: str | Path, *, name: str = "_network_module") -> ModuleType:
    """Import a network config by path, as weaver's ``--network-config`` does; it must define ``get_model``."""
    from weaver.utils.import_tools import import_module

    if not Path(path).is_file():
        raise FileNotFoundError(f"network config not found: {path}")
    module = import_module(str(path), name=name)
    if not hasattr(module, "get_model"):
        raise ValueError(f"{path} has no get_model(data_config, **kwargs)")
    return module


def weaver_exe() -> str:
    """The ``weaver`` entry point installed beside this Python interpreter (the project's venv)."""
    exe = Path(sys.executable).with_name("weaver")
    if not exe.is_file():
        raise ValueError(f"weaver not found at {exe}; run inside the project's venv")
    return str(exe)


def build_model(
    network_config: str | Path, data_config: Any, *, options: dict[str, Any] | None = None, for_inference: bool = True
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Import the network config by path (as weaver does) and call ``get_model(data_config, **options)``."""
    module = import_network_config(network_config)
    opts = dict(options or {})
    if for_inference:
        opts["for_inference"] = True
    model, model_info = module.get_model(data_config, **opts)
    return model, model_info


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state_dict (``weights_only=True``) strictly after validating keys and shapes."""
    load_checkpoint(model, path)


def load_model(
    network_config: str | Path,
    data_config: Any,
    *,
    weights: str | Path | None,
    options: dict[str, Any] | None = None,
    device: str = "cpu",
    for_inference: bool = True,
    seed: int = 0,
) -> LoadedModel:
    """Build the model, load weights (or keep the random init), move to ``device`` and switch to ``eval()``."""
    torch.manual_seed(seed)
    model, model_info = build_model(network_config, data_config, options=options, for_inference=for_inference)
    if weights is not None:
        load_weights(model, weights)
    model = model.to(device).eval()
    names = list(model_info.get("input_names", data_config.input_names))
    return LoadedModel(model, model_info, names, str(weights) if weights else "random", dict(options or {}))


def check_device(device: str) -> torch.device:
    """Validate ``--device``: a clear error when CUDA is requested on a machine without a visible GPU."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} requested but torch.cuda.is_available() is False (no visible GPU)")
    return torch.device(device)


_WARMED: weakref.WeakSet = weakref.WeakSet()


def warm_up(model: torch.nn.Module, inputs: Sequence[torch.Tensor], *, device: torch.device, calls: int = 2) -> int:
    """Run forward calls until lazy paths are settled: >= 6 the first time a model is seen (ParT's trimmer is idle
    for 5 calls), more on CUDA (allocator, cuDNN autotune); ``calls`` (default 2) for a later new input shape."""
    first = model not in _WARMED
    n = max(calls, MIN_WARMUP_CALLS if first else 0, CUDA_WARMUP_CALLS if device.type == "cuda" and first else 0)
    with torch.inference_mode():
        for _ in range(n):
            model(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _WARMED.add(model)
    return n


# ----------------------------------------------------------------------------------------------------------------
# real inputs through weaver's own dataset
# ----------------------------------------------------------------------------------------------------------------


class InputError(ValueError):
    """``--input`` files that cannot be profiled: one line per problem, each naming the file."""


@dataclass(frozen=True)
class InputPlan:
    """What the profiler reads from its ``--input`` files: a data config reduced to the model inputs, plus the
    labels and the selection where every file has their branches; ``notes`` say what was left out and why."""

    data_config: Path
    files: tuple[str, ...]
    notes: tuple[str, ...]


NO_LABEL = "_no_label_"  # the label weaver reads when the files have no label branches: -1 for every jet
# the parts of a data config that the profiler reads only when the files have their branches
_OPTIONAL_PARTS = {"labels": ("labels",), "selection": ("selection", "test_time_selection")}


def plan_inputs(data_config_path: str | Path, files: Sequence[str], *, work_dir: Path) -> InputPlan:
    """Preflight (``data.check``) the files for the model inputs, then add the optional parts they support.

    Observers, monitor variables and reweighting are never read: a file without ``jet_tau1`` profiles fine. Any
    problem with an input branch (missing, truncated or empty file, wrong structure) is an ``InputError``.
    """
    from data import check

    check.load_data_config(data_config_path)  # a one-line ConfigError for an unusable config
    options = yaml.safe_load(Path(data_config_path).read_text())
    kept = {**options, "observers": [], "monitor_variables": [], "weights": None, "selection": None,
            "test_time_selection": None, "labels": {"type": "custom", "value": {}}}
    with tempfile.TemporaryDirectory(prefix="weaverlab_plan_") as tmp:
        inputs_only = _write_config(kept, Path(tmp) / "inputs_only.yaml")
        report = check.check_files(files, inputs_only, mode="test", allow_nonfinite=True, progress=False)
        if not report.ok:
            raise InputError("\n".join(p.line() for p in report.errors))
        notes = [p.line() for p in report.problems]  # warnings only, e.g. NaN counts (the model masks them)
        base = _needed_branches(inputs_only)
        present = {f: _branches(f, options.get("treename")) for f in files}  # read each file's metadata once
        for part, keys in _OPTIONAL_PARTS.items():
            if not any(options.get(k) for k in keys):
                continue
            trial = {**kept, **{k: options.get(k) for k in keys}}
            extra = sorted(_needed_branches(_write_config(trial, Path(tmp) / f"with_{part}.yaml")) - base)
            lacking = [f for f in files if not set(extra) <= present[f]]
            if lacking:
                missing = sorted(set(extra) - present[lacking[0]])
                notes.append(f"{part} not read: {len(lacking)} of {len(files)} file(s) lack branch(es) "
                             f"{', '.join(missing)} (first: {lacking[0]})")
            else:
                kept = trial
    if not kept["labels"]["value"]:  # weaver's dataset needs one label: a constant -1 per jet ("no label")
        kept["labels"] = {"type": "custom", "value": {NO_LABEL: f"np.zeros(len({sorted(base)[0]})) - 1"}}
    work_dir.mkdir(parents=True, exist_ok=True)
    return InputPlan(_write_config(kept, work_dir / "profiling_inputs.yaml"), tuple(files), tuple(notes))


def _write_config(options: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(options, sort_keys=False))
    return path


def _needed_branches(config_path: Path) -> set[str]:
    """The file branches weaver reads for ``--predict`` with this data config."""
    from data import check

    return {b.name for b in check.requirements(check.load_data_config(config_path), mode="test").branches.values()}


def _branches(path: str, treename: str | None) -> set[str]:
    """Branch (column) names of one input file that already passed the preflight."""
    from data.check import FileReport, open_source

    source = open_source(FileReport(path), treename)
    return set() if source is None else source.branches


def expand_input_files(pattern: str | Sequence[str]) -> list[str]:
    """Expand one glob (or several) into a sorted file list; an empty match is an error."""
    patterns = [pattern] if isinstance(pattern, (str, Path)) else list(pattern)
    files = sorted({f for p in patterns for f in glob.glob(str(p))})
    if not files:
        raise FileNotFoundError(f"--input matched no files: {patterns}")
    return files


@dataclass
class RealJets:
    """Preprocessed inputs (as weaver feeds them) and the integer truth label of every jet."""

    inputs: dict[str, torch.Tensor]
    labels: np.ndarray
    label_names: list[str]


def load_real_jets(files: Sequence[str | Path], data_config_path: str | Path, *,
                   max_jets: int | None = 4096) -> RealJets:
    """Read and preprocess jets with weaver's ``SimpleIterDataset`` (test mode, files in order, no shuffling);
    the first ``max_jets`` (None: all)."""
    from weaver.utils.dataset import SimpleIterDataset

    dataset = SimpleIterDataset(
        {"profile": [str(f) for f in files]},
        str(data_config_path),
        for_training=False,
        load_range_and_fraction=((0, 1), 1, 1),
        fetch_by_files=True,
        fetch_step=len(files),
        async_load=False,
        name="profile",
    )
    cfg = dataset.config
    names = list(cfg.input_names)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in names}
    labels: list[int] = []
    for X, y, _z in dataset:
        for k in names:
            chunks[k].append(np.asarray(X[k]))
        label = y[cfg.label_names[0]] if cfg.label_names else -1
        labels.append(int(label) if np.ndim(label) == 0 else -1)  # regression targets: no class index
        if max_jets is not None and len(labels) >= max_jets:
            break
    if not labels:
        raise RuntimeError(f"no jets read from {list(files)}")
    label_names = list(cfg.label_value) if isinstance(cfg.label_value, list) else []
    return RealJets({k: torch.from_numpy(np.stack(v)).float() for k, v in chunks.items()}, np.array(labels),
                    label_names)


def load_real_inputs(
    files: Sequence[str | Path], data_config_path: str | Path, *, max_jets: int = 4096
) -> dict[str, torch.Tensor]:
    """Stacked input tensors of up to ``max_jets`` jets, preprocessed exactly as weaver does."""
    return load_real_jets(files, data_config_path, max_jets=max_jets).inputs


def take_batch(pool: dict[str, torch.Tensor], names: Sequence[str], batch_size: int) -> list[torch.Tensor]:
    """Take ``batch_size`` jets from a pool, cycling through it when the pool is smaller than the batch."""
    n = next(iter(pool.values())).shape[0]
    idx = torch.arange(batch_size) % n
    return [pool[k][idx].contiguous() for k in names]


def real_multiplicity(pool: dict[str, torch.Tensor], mask_name: str | None) -> dict[str, float]:
    """Particle-multiplicity summary of a real input pool (from the mask input)."""
    if mask_name is None or mask_name not in pool:
        return {}
    counts = pool[mask_name].reshape(pool[mask_name].shape[0], -1).sum(dim=1).float()
    return {"mean": float(counts.mean()), "median": float(counts.median()), "max": float(counts.max())}


# ----------------------------------------------------------------------------------------------------------------
# synthetic inputs: random but physical jets through the data config's preprocessing rules
# ----------------------------------------------------------------------------------------------------------------

_PDG_CHARGED = (211, -211, 321, -321, 2212, -2212, 11, -11, 13, -13)


def _synthetic_particles(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Raw per-particle JetClass-like variables for one massless-particle jet with ``n`` constituents."""
    jet_pt = rng.uniform(500.0, 1000.0)
    jet_eta = rng.uniform(-2.0, 2.0)
    frac = rng.dirichlet(np.full(n, 0.6))
    pt = np.sort(frac)[::-1] * jet_pt
    deta = rng.normal(0.0, 0.15, n)
    dphi = rng.normal(0.0, 0.15, n)
    eta = jet_eta + deta
    px, py = pt * np.cos(dphi), pt * np.sin(dphi)
    pz = pt * np.sinh(eta)
    energy = pt * np.cosh(eta)
    jet_e = energy.sum()
    kind = rng.choice(5, size=n, p=[0.55, 0.1, 0.3, 0.03, 0.02])  # ch. hadron, neutral hadron, photon, e, mu
    charged = (kind == 0) | (kind >= 3)
    charge = np.where(charged, rng.choice([-1.0, 1.0], size=n), 0.0)
    d0 = np.where(charged, rng.normal(0, 0.05, n), 0.0)
    dz = np.where(charged, rng.normal(0, 0.05, n), 0.0)
    ptot = np.sqrt(jet_pt**2 + (jet_pt * np.sinh(jet_eta)) ** 2)
    raw = {
        "part_px": px, "part_py": py, "part_pz": pz, "part_energy": energy,
        "part_deta": deta, "part_dphi": dphi, "part_eta": eta, "part_phi": dphi,
        "part_pt": pt, "part_pt_log": np.log(pt), "part_e_log": np.log(energy),
        "part_logptrel": np.log(pt / jet_pt), "part_logerel": np.log(energy / jet_e),
        "part_deltaR": np.hypot(deta, dphi), "part_mask": np.ones(n),
        "part_charge": charge, "part_isChargedHadron": (kind == 0) * 1.0, "part_isNeutralHadron": (kind == 1) * 1.0,
        "part_isPhoton": (kind == 2) * 1.0, "part_isElectron": (kind == 3) * 1.0, "part_isMuon": (kind == 4) * 1.0,
        "part_d0val": d0, "part_dzval": dz, "part_d0": np.tanh(d0), "part_dz": np.tanh(dz),
        "part_d0err": np.where(charged, rng.uniform(0.01, 0.1, n), 0.0),
        "part_dzerr": np.where(charged, rng.uniform(0.01, 0.1, n), 0.0),
        "jet_pt": np.full(n, jet_pt), "jet_energy": np.full(n, jet_e), "jet_p": np.full(n, ptot),
    }
    return raw


def _pad(values: np.ndarray, length: int, mode: str, pad_value: float) -> np.ndarray:
    """weaver's padding: ``wrap`` repeats the real entries, ``constant`` fills with ``pad_value``."""
    n = len(values)
    if n >= length:
        return values[:length]
    if mode == "wrap" and n > 0:
        return values[np.arange(length) % n]
    return np.concatenate([values, np.full(length - n, pad_value)])


def synthetic_inputs(
    data_config: Any,
    *,
    batch_size: int,
    multiplicity: int | tuple[int, int],
    seed: int = 0,
    length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Random-but-physical jets with ``multiplicity`` particles (fixed, or a (lo, hi) range) in weaver's layout.

    Known JetClass variables are computed from the generated four-momenta; an unknown variable is drawn from a unit
    normal. Standardisation (subtract/multiply/clip) and padding follow the data config, like weaver does.
    ``length`` overrides the padded length of every particle input (e.g. = multiplicity: no padded slots).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    jets = []
    for _ in range(batch_size):
        n = multiplicity if isinstance(multiplicity, int) else int(rng.integers(multiplicity[0], multiplicity[1] + 1))
        if n < 1:
            raise ValueError(f"multiplicity must be >= 1, got {n}")
        jets.append(_synthetic_particles(rng, n))
    for group, var_names in data_config.input_dicts.items():
        params0 = data_config.preprocess_params[var_names[0]]
        if params0["length"] is None:
            raise ValueError(f"input group {group!r} has no fixed length; --synthetic supports padded particle inputs")
        pad_len = length or params0["length"]
        arr = np.zeros((batch_size, len(var_names), pad_len), dtype=np.float32)
        for b, raw in enumerate(jets):
            for v, name in enumerate(var_names):
                p = data_config.preprocess_params[name]
                x = raw.get(name)
                if x is None:
                    x = rng.standard_normal(len(raw["part_px"]))
                x = np.asarray(x, dtype=np.float64)
                if p["center"] is not None:
                    x = np.clip((x - p["center"]) * p["scale"], p["min"], p["max"])
                x = np.nan_to_num(x)
                arr[b, v] = _pad(x, pad_len, p["pad_mode"], p["pad_value"])
        out[group] = arr
    return {k: torch.from_numpy(v) for k, v in out.items()}


def synthetic_hits(
    *, batch_size: int, length: int, hits: int | tuple[int, int] | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random detector-hit events in data/Tracks/tracks.yaml's input layout (``hit_points``, ``hit_features``,
    ``hit_mask``), already standardised: PMTs on a sphere of radius 1.1 R, times, log charges.

    ``hits`` real hits per event (fixed, or a (lo, hi) range drawn per event); None: all ``length`` slots are real.
    The slots after the real hits are padding (mask 0, zero points and features).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    gen = torch.Generator().manual_seed(seed)
    if hits is None:
        n_real = torch.full((batch_size,), length)
    elif isinstance(hits, int):
        n_real = torch.full((batch_size,), hits)
    else:
        n_real = torch.randint(hits[0], hits[1] + 1, (batch_size,), generator=gen)
    if int(n_real.min()) < 1 or int(n_real.max()) > length:
        raise ValueError(f"hits per event must lie in 1..{length}, got {hits}")
    xyz = torch.nn.functional.normalize(torch.randn(batch_size, 3, length, generator=gen), dim=1) * 1.1
    t = torch.rand(batch_size, 1, length, generator=gen) * 3.0
    logq = torch.randn(batch_size, 1, length, generator=gen)
    mask = (torch.arange(length).view(1, 1, -1) < n_real.view(-1, 1, 1)).float()
    return {"hit_points": torch.cat((xyz, t), dim=1) * mask,
            "hit_features": torch.cat((xyz, t - 1.0, logq), dim=1) * mask, "hit_mask": mask}


def count_parameters(model: torch.nn.Module) -> int:
    """Total number of parameters (sum of ``numel``), trainable or not."""
    return int(sum(p.numel() for p in model.parameters()))


def mask_input_name(names: Sequence[str]) -> str | None:
    """The input holding the particle mask (weaver convention: its name ends with ``mask``)."""
    return next((n for n in names if n.endswith("mask")), None)


def fmt_si(value: float, unit: str = "") -> str:
    """Format a number with an SI prefix (k, M, G, T) for terminal and Markdown tables."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}".strip()
    exp = min(max(int(math.floor(math.log10(abs(value)) / 3)), 0), 4)
    return f"{value / 1000**exp:.3g} {' kMGT'[exp].strip()}{unit}".strip()
