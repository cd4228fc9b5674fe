"""Preflight check of ROOT and parquet input files against a weaver data config, before a long ``weaver`` run.

``python -m data.check FILES... -c DATA_CONFIG.yaml [--tree NAME] [--max-entries N] [--allow-nonfinite]``

weaver-core reads bad inputs with a deep traceback (missing branch: awkward ``FieldNotFoundError``; truncated or
empty file: ``OSError`` then ``Zero entries loaded``) or silently (a per-jet branch where a per-particle one is
expected becomes a one-particle jet; NaN becomes 0). This checker finds those problems first and prints one line
per problem, ``FILE: problem``, then a summary line. Exit code: 0 clean, 1 any problem, 2 usage error.

Which branches: weaver-core's own ``DataConfig`` works out the raw branches it will load (inputs, labels,
observers, monitor variables, weights, selection and ``new_variables`` expressions, resolved through
``new_variables``); the checker uses exactly that set. Per file it checks: exists, non-empty, opens (uproot for
ROOT, pyarrow for parquet), has the TTree, > 0 entries, every needed branch present, numeric type (bool, int,
float), the structure weaver expects (jagged for branches an input group pads per particle; flat for simple
labels, weights and unpadded inputs), every basket readable (each needed branch is read in full, in chunks),
equal particle counts across the jagged branches of one input group, one-hot simple labels, and NaN / +inf /
-inf counts per branch.

Non-finite policy: a file with any NaN or +-inf in a needed branch is REJECTED (exit 1, one line per branch with
the counts), because weaver turns NaN into 0 and passes inf in unstandardised inputs (``pf_vectors``) straight to
the model, whose logits become NaN. ``--allow-nonfinite`` turns these into warnings (exit 0); the model-side
safety net is then ``JetTagger``'s ``mask_nonfinite`` option (on by default), which treats such a particle as
padding and counts it.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import yaml

Kind = Literal["particle", "jet", "any"]
Mode = Literal["train", "test", "both"]

WEAVER_EXTENSIONS = (".root", ".h5", ".parquet", ".awkd")
# names weaver itself adds to the table before evaluating expressions (weaver/utils/dataset.py: _preprocess)
WEAVER_DEFINED = frozenset({"aux_training_"})
DEFAULT_STEP = 200_000
MAX_MESSAGE = 240


class ConfigError(ValueError):
    """The data config cannot be used (missing file, invalid YAML, rejected by weaver's DataConfig)."""


@dataclass(frozen=True)
class BranchNeed:
    """A raw branch weaver will load: its name in the file and the structure weaver expects."""

    name: str
    kind: Kind
    reason: str = ""  # why that structure, e.g. "input group 'pf_vectors' pads it to 128 per jet"


@dataclass(frozen=True)
class Requirements:
    """What a data config needs from every file: branches, tree name, padded groups, simple labels."""

    branches: dict[str, BranchNeed]
    treename: str | None
    group_branches: dict[str, tuple[str, ...]]  # padded input group -> raw branches it is computed from
    simple_labels: tuple[str, ...]  # label branches that must be one-hot (training)


@dataclass(frozen=True)
class Problem:
    """One line of the report: ``FILE: message`` (a warning does not fail the check)."""

    file: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def line(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}: {prefix}{self.message}"


@dataclass
class BranchStats:
    """What was read from one branch: its awkward type and the count of non-finite values."""

    name: str
    type: str
    jagged: bool
    values: int = 0
    nan: int = 0
    posinf: int = 0
    neginf: int = 0

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf


@dataclass
class FileReport:
    """The check of one file: entries read, per-branch statistics and the problems found."""

    path: str
    entries: int | None = None
    branches: dict[str, BranchStats] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def add(self, message: str, severity: Literal["error", "warning"] = "error") -> None:
        self.problems.append(Problem(self.path, message, severity))


@dataclass
class CheckReport:
    """The check of all files, with the branches the data config needs."""

    files: list[FileReport]
    needed: tuple[str, ...]
    allow_nonfinite: bool = False

    @property
    def problems(self) -> list[Problem]:
        return [p for f in self.files for p in f.problems]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: files, entries, errors and warnings."""
        bad = sum(not f.ok for f in self.files)
        entries = sum(f.entries or 0 for f in self.files)
        warnings = len(self.problems) - len(self.errors)
        verdict = "OK" if self.ok else "FAILED"
        return (f"{verdict}: {len(self.files)} file(s), {entries} entries, {len(self.needed)} needed branches; "
                f"{len(self.errors)} problem(s) in {bad} file(s), {warnings} warning(s)")

    def lines(self, *, show_ok: bool = True) -> list[str]:
        """The report as printed by the CLI: problems per file, an OK line per clean file, the summary."""
        out: list[str] = []
        for f in self.files:
            out.extend(p.line() for p in f.problems)
            if show_ok and f.ok:
                out.append(f"{f.path}: OK ({f.entries} entries, {len(f.branches)} branches)")
        out.append(self.summary())
        return out


# ---------------------------------------------------------------------------------------------- data config


def load_data_config(path: str | Path) -> Any:
    """weaver's own ``DataConfig`` for a YAML file; any failure is a one-line ``ConfigError``."""
    from weaver.utils.data.config import DataConfig

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: data config not found")
    try:
        options = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: a weaver data config must be a YAML mapping, got {type(options).__name__}")
    try:
        return DataConfig(print_info=False, **options)
    except Exception as exc:  # noqa: BLE001 - weaver raises KeyError/AssertionError/... for bad configs
        raise ConfigError(f"{path}: weaver's DataConfig rejects it: {type(exc).__name__}: {_one_line(exc)}") from None


def requirements(data_config: Any, *, mode: Mode = "both") -> Requirements:
    """The raw branches a weaver data config reads (as weaver-core resolves them) and their expected structure."""
    from weaver.utils.data.eval_utils import _get_data_var_names

    if mode not in ("train", "test", "both"):
        raise ValueError(f"mode must be 'train', 'test' or 'both', got {mode!r}")
    loads: set[str] = set()
    if mode in ("train", "both"):
        loads |= set(data_config.train_load_branches)
    if mode in ("test", "both"):
        loads |= set(data_config.test_load_branches)
    file_magic = set((data_config.options.get("file_magic") or {}).keys())
    loads -= file_magic | WEAVER_DEFINED

    kinds: dict[str, tuple[Kind, str]] = {}
    groups: dict[str, tuple[str, ...]] = {}
    for group, names in data_config.input_dicts.items():
        length = data_config.preprocess_params[names[0]]["length"]
        for name in names:
            if name in loads and name not in data_config.var_funcs:
                if length is None:
                    kinds[name] = ("jet", f"input group '{group}' has no length")
                elif length > 1:
                    kinds[name] = ("particle", f"input group '{group}' pads it to {length}")
        if length is not None and length > 1:
            groups[group] = tuple(sorted(_raw_names(names, data_config.var_funcs, _get_data_var_names) & loads))
            for name in names:  # a padded new variable computed from a single raw branch: that one is per particle
                raw = _raw_names([name], data_config.var_funcs, _get_data_var_names) & loads
                if name in data_config.var_funcs and len(raw) == 1 and next(iter(raw)) not in kinds:
                    kinds[next(iter(raw))] = ("particle", f"'{name}' of input group '{group}' is computed from it "
                                              f"alone and padded to {length}")
    simple_labels: tuple[str, ...] = ()
    if data_config.label_type == "simple":
        simple_labels = tuple(data_config.label_value)
        for name in simple_labels:
            kinds[name] = ("jet", "a simple label")
    if data_config.weight_name is not None and not data_config.use_precomputed_weights:
        for name in (*data_config.reweight_branches, *data_config.reweight_classes):
            kinds[name] = ("jet", "a reweighting variable")

    magic = data_config.options.get("branch_magic") or {}
    branches = {}
    for name in sorted(loads):
        kind, reason = kinds.get(name, ("any", ""))
        branches[name] = BranchNeed(_decode(name, magic), kind, reason)
    groups = {g: tuple(_decode(n, magic) for n in names) for g, names in groups.items()}
    labels = tuple(_decode(n, magic) for n in simple_labels if n in loads)
    return Requirements(branches, data_config.treename, groups, labels)


def _raw_names(names: Iterable[str], var_funcs: dict[str, str], get_names: Any) -> set[str]:
    """Raw branches behind ``names``, following ``new_variables`` expressions with weaver's name parser."""
    out: set[str] = set()
    todo = list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in var_funcs:
            todo.extend(get_names(var_funcs[name]))
        else:
            out.add(name)
    return out


def _decode(name: str, magic: dict[str, str]) -> str:
    """The branch name in the file, after weaver's ``branch_magic`` substring replacements."""
    for src, tgt in magic.items():
        if src in name:
            name = name.replace(src, tgt)
    return name


# ---------------------------------------------------------------------------------------------- files


def expand_paths(paths: Sequence[str | Path]) -> list[str]:
    """Paths as given; a pattern with ``*?[`` that is not an existing file is expanded like weaver does."""
    out: list[str] = []
    for p in map(str, paths):
        if not os.path.exists(p) and any(c in p for c in "*?["):
            matches = sorted(glob.glob(p))
            out.extend(matches if matches else [p])
        else:
            out.append(p)
    return out


def check_files(files: Sequence[str | Path], data_config_path: str | Path, *, treename: str | None = None,
                max_entries: int | None = None, allow_nonfinite: bool = False, mode: Mode = "both",
                step: int = DEFAULT_STEP, progress: bool = True) -> CheckReport:
    """Check every file against the data config; raises ``ConfigError`` only for an unusable data config."""
    if max_entries is not None and max_entries < 1:
        raise ValueError(f"max_entries must be >= 1, got {max_entries}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    req = requirements(load_data_config(data_config_path), mode=mode)
    paths = expand_paths(files)
    reports = []
    from tqdm import tqdm

    for path in tqdm(paths, desc="checking files", unit="file", disable=not progress):
        rep = FileReport(path)
        try:
            _check_one(rep, req, treename=treename or req.treename, max_entries=max_entries,
                       allow_nonfinite=allow_nonfinite, check_labels=mode != "test", step=step)
        except Exception as exc:  # noqa: BLE001 - a data problem must be one line, never a traceback
            rep.add(f"unexpected error while checking: {type(exc).__name__}: {_one_line(exc)}")
        reports.append(rep)
    return CheckReport(reports, tuple(sorted(b.name for b in req.branches.values())), allow_nonfinite)


@dataclass
class Source:
    """One opened input file, ROOT TTree or parquet table, seen as named columns (weaver's 'branches')."""

    what: str  # for messages: "TTree 'tree'" or "parquet table"
    entries: int
    branches: set[str]
    read: Callable[[str, int, int], ak.Array]  # (branch, start, stop) -> array
    typename: Callable[[str], str]  # the file's own type name of a branch, for messages


def open_source(rep: FileReport, treename: str | None) -> Source | None:
    """Open ``rep.path`` (after the file-level checks) as a ``Source``; None after a problem (added to ``rep``)."""
    path = Path(rep.path)
    if path.suffix not in WEAVER_EXTENSIONS:
        rep.add(f"weaver reads only {', '.join(WEAVER_EXTENSIONS)} files, not '{path.suffix or path.name}'")
        return None
    if path.suffix not in (".root", ".parquet"):
        rep.add(f"not checked: this checker reads ROOT and parquet files only ({path.suffix})", "warning")
        return None
    if not path.exists():
        rep.add("file not found")
        return None
    if not path.is_file():
        rep.add("not a regular file")
        return None
    if path.stat().st_size == 0:
        rep.add("file is empty (0 bytes)")
        return None
    return _open_parquet(rep, path) if path.suffix == ".parquet" else _open_root(rep, path, treename)


def _open_root(rep: FileReport, path: Path, treename: str | None) -> Source | None:
    import uproot

    try:
        rfile = uproot.open(path)
    except Exception as exc:  # noqa: BLE001
        rep.add(f"cannot open as a ROOT file (truncated or corrupt?): {type(exc).__name__}: {_one_line(exc)}")
        return None
    tree = _find_tree(rep, rfile, treename)
    if tree is None:
        return None
    return Source(f"TTree '{tree.name}'", int(tree.num_entries), set(tree.keys(recursive=True)),
                  lambda name, start, stop: tree[name].array(entry_start=start, entry_stop=stop, library="ak"),
                  lambda name: tree[name].typename)


def _open_parquet(rep: FileReport, path: Path) -> Source | None:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        schema = table.schema_arrow
    except Exception as exc:  # noqa: BLE001
        rep.add(f"cannot open as a parquet file (truncated or corrupt?): {type(exc).__name__}: {_one_line(exc)}")
        return None
    columns: dict[str, ak.Array] = {}

    def read(name: str, start: int, stop: int) -> ak.Array:
        if name not in columns:  # parquet reads whole columns; keep the one being scanned
            columns.clear()
            columns[name] = ak.from_parquet(path, columns=[name])[name]
        return columns[name][start:stop]

    return Source("parquet table", int(table.metadata.num_rows), set(schema.names), read,
                  lambda name: str(schema.field(name).type))


def _check_one(rep: FileReport, req: Requirements, *, treename: str | None, max_entries: int | None,
               allow_nonfinite: bool, check_labels: bool, step: int) -> None:
    """Fill ``rep`` with the problems of one file (stops at the first problem that makes the rest meaningless)."""
    source = open_source(rep, treename)
    if source is None:
        return
    rep.entries = source.entries
    if rep.entries == 0:
        rep.add(f"{source.what} has 0 entries")
        return
    stop = rep.entries if max_entries is None else min(rep.entries, max_entries)
    rep.entries = stop
    missing = sorted(b.name for b in req.branches.values() if b.name not in source.branches)
    if missing:
        rep.add(f"missing branch(es) {', '.join(repr(m) for m in missing)} in {source.what} "
                f"({len(missing)} of {len(req.branches)} needed)")
    counts: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    unreadable: dict[str, str] = {}
    for need in req.branches.values():
        if need.name not in source.branches:
            continue
        scanned = _scan_branch(rep, source, need, stop=stop, step=step, keep_values=need.name in req.simple_labels)
        if isinstance(scanned, str):
            unreadable[need.name] = scanned
            continue
        if scanned is None:
            continue
        stats, branch_counts, values = scanned
        rep.branches[need.name] = stats
        if branch_counts is not None:
            counts[need.name] = branch_counts
        if values is not None:
            labels[need.name] = values
        if stats.nonfinite:
            rep.add(f"branch '{need.name}' has {stats.nonfinite} non-finite value(s) of {stats.values} "
                    f"(NaN {stats.nan}, +inf {stats.posinf}, -inf {stats.neginf})",
                    "warning" if allow_nonfinite else "error")
    if unreadable:
        shown = list(unreadable)[:5]
        more = f" and {len(unreadable) - len(shown)} more" if len(unreadable) > len(shown) else ""
        names = ", ".join(repr(n) for n in shown) + more
        rep.add(f"{len(unreadable)} of {len(req.branches)} needed branches cannot be read (truncated or corrupt "
                f"file?): {names}; first error: {next(iter(unreadable.values()))}")
    _check_counts(rep, req, counts)
    if check_labels and req.simple_labels and set(req.simple_labels) <= set(labels):
        _check_one_hot(rep, [labels[n] for n in req.simple_labels])


def _find_tree(rep: FileReport, rfile: Any, treename: str | None) -> Any:
    """The TTree to read (weaver's rule: the named one, or the only TTree of the file); None after a problem."""
    import uproot

    try:
        classes = {k.split(";")[0]: v for k, v in rfile.classnames().items()}
    except Exception as exc:  # noqa: BLE001
        rep.add(f"cannot list the file's contents (truncated or corrupt?): {type(exc).__name__}: {_one_line(exc)}")
        return None
    trees = sorted(k for k, v in classes.items() if v == "TTree")
    if treename is None:
        if len(trees) != 1:
            found = ", ".join(trees) or "none"
            rep.add(f"expected exactly one TTree when no tree name is given, found {len(trees)} ({found}); "
                    "set treename in the data config or --tree")
            return None
        treename = trees[0]
    if treename not in classes:
        rep.add(f"no TTree '{treename}' (TTrees in the file: {', '.join(trees) or 'none'})")
        return None
    if classes[treename] != "TTree":
        hint = " (uproot writes an RNTuple for f[name] = {...}; write TTrees with mktree + extend)" \
            if "RNTuple" in classes[treename] else ""
        rep.add(f"'{treename}' is a {classes[treename]}, not a TTree: weaver reads only TTrees{hint}")
        return None
    try:
        tree = rfile[treename]
        if not isinstance(tree, uproot.TTree):
            raise TypeError(type(tree).__name__)
        return tree
    except Exception as exc:  # noqa: BLE001
        rep.add(f"cannot read TTree '{treename}' (truncated or corrupt?): {type(exc).__name__}: {_one_line(exc)}")
        return None


def _scan_branch(rep: FileReport, source: Source, need: BranchNeed, *, stop: int, step: int,
                 keep_values: bool) -> tuple[BranchStats, np.ndarray | None, np.ndarray | None] | str | None:
    """Read one branch in chunks: type, structure, non-finite counts.

    Returns the read error as a string when a basket cannot be read, None after a type problem (already added).
    """
    stats: BranchStats | None = None
    counts: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for start in range(0, stop, step):
        try:
            arr = source.read(need.name, start, min(stop, start + step))
        except Exception as exc:  # noqa: BLE001
            return f"entries {start}-{min(stop, start + step)}: {type(exc).__name__}: {_one_line(exc)}"
        if stats is None:
            stats = _branch_type(rep, arr, need, source.typename(need.name))
            if stats is None:
                return None
        flat = ak.to_numpy(ak.flatten(arr, axis=None)) if stats.jagged else ak.to_numpy(arr)
        stats.values += flat.size
        if flat.dtype.kind == "f":
            nan = np.isnan(flat)
            stats.nan += int(nan.sum())
            stats.posinf += int(np.isposinf(flat).sum())
            stats.neginf += int(np.isneginf(flat).sum())
        if stats.jagged:
            counts.append(np.asarray(ak.num(arr, axis=1), dtype=np.int64))
        elif keep_values:
            values.append(flat)
    if stats is None:
        return None
    return stats, (np.concatenate(counts) if counts else None), (np.concatenate(values) if values else None)


def _branch_type(rep: FileReport, arr: ak.Array, need: BranchNeed, typename: str) -> BranchStats | None:
    """Check that a branch is numeric, flat or one-level jagged, as ``need`` expects; None after a problem."""
    typ = arr.type.content
    type_str = str(typ)
    jagged = isinstance(typ, (ak.types.ListType, ak.types.RegularType)) and not _is_string(typ)
    leaf = typ.content if jagged else typ
    numeric = isinstance(leaf, ak.types.NumpyType) and not _is_string(leaf) and (
        leaf.primitive == "bool" or leaf.primitive.startswith(("int", "uint", "float")))
    if not numeric:
        rep.add(f"branch '{need.name}' has type '{type_str}' (in the file: '{typename}'), expected numbers "
                "(bool, int or float)")
        return None
    if need.kind == "particle" and not jagged:
        rep.add(f"branch '{need.name}' has type '{type_str}', expected a jagged per-particle branch ({need.reason}); "
                "weaver would read each jet as a single particle")
        return None
    if need.kind == "jet" and jagged:
        rep.add(f"branch '{need.name}' has type '{type_str}', expected a flat per-jet branch ({need.reason})")
        return None
    return BranchStats(need.name, type_str, jagged)


def _is_string(typ: Any) -> bool:
    return typ.parameter("__array__") in ("string", "bytestring", "char", "byte")


def _check_counts(rep: FileReport, req: Requirements, counts: dict[str, np.ndarray]) -> None:
    """The jagged branches of one padded input group must have the same number of particles in every jet."""
    for group, names in req.group_branches.items():
        jagged = [n for n in names if n in counts]
        for name in jagged[1:]:
            ref = counts[jagged[0]]
            if len(counts[name]) != len(ref) or not np.array_equal(counts[name], ref):
                n_bad = int(np.sum(counts[name] != ref)) if len(counts[name]) == len(ref) else len(ref)
                rep.add(f"branches '{jagged[0]}' and '{name}' (input group '{group}') have different particle "
                        f"counts in {n_bad} of {len(ref)} entries")
                break


def _check_one_hot(rep: FileReport, columns: list[np.ndarray]) -> None:
    """weaver's training stops ('Inconsistent label definition') unless exactly one simple label is set per jet."""
    total = np.sum(np.stack([c.astype(np.int64) for c in columns], axis=1), axis=1)
    none, several = int(np.sum(total == 0)), int(np.sum(total > 1))
    if none or several:
        rep.add(f"labels are not one-hot: {none} entries have no label set, {several} have more than one "
                "(weaver's training stops with 'Inconsistent label definition')")


def _one_line(exc: BaseException) -> str:
    """An exception message on one line (without uproot's repeated file path), shortened."""
    lines = [x.strip() for x in str(exc).strip().splitlines() if not x.strip().startswith("for file path")]
    first = " ".join(x for x in lines if x) or type(exc).__name__
    return first if len(first) <= MAX_MESSAGE else first[: MAX_MESSAGE - 3] + "..."


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print one line per problem and a summary; exit 0 clean, 1 problems, 2 usage error."""
    parser = argparse.ArgumentParser(prog="python -m data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="ROOT files (glob patterns are expanded like weaver does)")
    parser.add_argument("-c", "--data-config", required=True, help="weaver data config YAML")
    parser.add_argument("--tree", default=None, help="TTree name (default: the data config's treename, or the "
                        "only TTree in the file)")
    parser.add_argument("--max-entries", type=int, default=None, help="read at most N entries per file (faster; "
                        "problems after entry N are not seen)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="report NaN/inf as warnings, not errors")
    parser.add_argument("--mode", choices=("train", "test", "both"), default="both",
                        help="branches needed for training, for --predict, or both (default)")
    parser.add_argument("--quiet", action="store_true", help="no OK line per clean file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.max_entries is not None and args.max_entries < 1:
        parser.error(f"--max-entries must be >= 1, got {args.max_entries}")
    try:
        report = check_files(args.files, args.data_config, treename=args.tree, max_entries=args.max_entries,
                             allow_nonfinite=args.allow_nonfinite, mode=args.mode,
                             progress=not args.no_progress and sys.stderr.isatty())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in report.lines(show_ok=not args.quiet):
        print(line)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
