"""Generate JetClass-format Monte-Carlo jets with Pythia 8 + FastJet (CLI: ``python -m data.generate``).

Files are named as in JetClass (``HToBB_000.root`` ...), each with a fixed number of jets, one Pythia seed per
(seed, class, file index), so the output depends only on ``seed`` and not on the number of workers. Files are
written under a temporary name and renamed when complete; complete files found on disk are kept (resume).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.pythia_jets import CLASS_SPECS, ClassSpec, JetGenerator, JetSelection, derive_seed

CLASSES: dict[str, ClassSpec] = dict(CLASS_SPECS)


@dataclass(frozen=True)
class FileTask:
    """One output file: which class, which index, how many jets, and the generator settings."""

    class_name: str
    index: int
    n_jets: int
    path: Path
    seed: int
    selection: JetSelection


@dataclass(frozen=True)
class FileResult:
    """What a worker did for one file (``skipped``: a complete file was already there)."""

    class_name: str
    path: Path
    n_jets: int
    seconds: float  # wall-clock seconds of the task (Pythia init included)
    events: int
    skipped: bool
    cpu_seconds: float = 0.0  # CPU seconds of the worker process for the task (robust on a loaded machine)


def parse_classes(classes: str | Sequence[str]) -> list[str]:
    """Normalise ``"all"``, a comma string or a list of short names; unknown names raise ValueError."""
    if isinstance(classes, str):
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in classes]
    if names == ["all"]:
        return list(CLASSES)
    if not names:
        raise ValueError(f"no classes given; valid: all, {', '.join(CLASSES)}")
    unknown = [n for n in names if n not in CLASSES]
    if unknown:
        raise ValueError(f"unknown class(es) {', '.join(unknown)}; valid: all, {', '.join(CLASSES)}")
    return list(dict.fromkeys(names))


def make_selection(pt_range: tuple[float, float], eta_max: float) -> JetSelection:
    """Validated jet window."""
    if len(pt_range) != 2:
        raise ValueError(f"pt_range must be (pt_min, pt_max), got {pt_range!r}")
    lo, hi = float(pt_range[0]), float(pt_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise ValueError(f"pt_range must satisfy 0 < pt_min < pt_max (GeV), got {pt_range!r}")
    if not (math.isfinite(eta_max) and 0.0 < eta_max <= 2.5):
        raise ValueError(f"eta_max must be in (0, 2.5] (the tracker acceptance), got {eta_max!r}")
    return JetSelection(pt_min=lo, pt_max=hi, eta_max=float(eta_max))


def shard_tasks(tasks: list[FileTask], shard_index: int, num_shards: int) -> list[FileTask]:
    """The tasks of shard ``shard_index`` of ``num_shards``: every num_shards-th file of the global plan.

    Round-robin over the plan (classes in order, then file index) spreads classes evenly over the shards.
    """
    for what, value in (("num_shards", num_shards), ("shard_index", shard_index)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{what} must be an integer, got {value!r}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards - 1}] for num_shards={num_shards}, got {shard_index}")
    return tasks[shard_index::num_shards]


def file_name(class_name: str, index: int) -> str:
    """JetClass file name, e.g. ``HToBB_007.root``."""
    if index > 999:
        raise ValueError(f"file index {index} does not fit the 3-digit JetClass naming; raise jets_per_file")
    return f"{CLASSES[class_name].file_prefix}_{index:03d}.root"


def plan_tasks(
    names: list[str], *, jets_per_class: int, jets_per_file: int, out_dir: Path, seed: int, selection: JetSelection
) -> list[FileTask]:
    """Split every class into files of ``jets_per_file`` jets (the last one takes the remainder)."""
    tasks = []
    for name in names:
        n_files = math.ceil(jets_per_class / jets_per_file)
        for i in range(n_files):
            n = min(jets_per_file, jets_per_class - i * jets_per_file)
            tasks.append(FileTask(name, i, n, out_dir / file_name(name, i), derive_seed(seed, name, i), selection))
    return tasks


_COUNTER = None  # shared progress counter (multiprocessing.Value) in worker processes
_LOCAL_BAR = None  # the progress bar itself when generating in-process (workers=1)


def _init_worker(counter, bar=None) -> None:
    global _COUNTER, _LOCAL_BAR
    _COUNTER, _LOCAL_BAR = counter, bar


def _bump(n: int) -> None:
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += n
    if _LOCAL_BAR is not None:
        _LOCAL_BAR.update(n)


def run_task(task: FileTask) -> FileResult:
    """Generate and write one file unless a complete one (same number of entries) already exists."""
    from data.rootio import count_entries, write_jet_file

    if task.path.exists() and count_entries(task.path) == task.n_jets:
        _bump(task.n_jets)
        return FileResult(task.class_name, task.path, task.n_jets, 0.0, 0, True)
    t0, c0 = time.perf_counter(), time.process_time()
    gen = JetGenerator(CLASSES[task.class_name], task.seed, selection=task.selection)
    block = gen.generate(task.n_jets, on_progress=_bump)
    write_jet_file(task.path, block, task.class_name)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return FileResult(task.class_name, task.path, task.n_jets, wall, gen.stats.events, False, cpu)


def _run_all(tasks: list[FileTask], workers: int, progress: bool) -> list[FileResult]:
    from tqdm import tqdm

    total = sum(t.n_jets for t in tasks)
    bar = tqdm(total=total, unit="jet", desc="generating", disable=not progress, smoothing=0.1)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    counter = ctx.Value("q", 0)
    try:
        if workers == 1:
            _init_worker(None, bar)
            return [run_task(t) for t in tasks]
        with ctx.Pool(workers, initializer=_init_worker, initargs=(counter,)) as pool:
            pending = pool.map_async(run_task, tasks, chunksize=1)
            while not pending.ready():
                pending.wait(0.5)
                bar.update(counter.value - bar.n)
            results = pending.get()
            bar.update(counter.value - bar.n)
            return results
    finally:
        _init_worker(None)
        bar.close()


def generate_dataset(
    *,
    classes: str | Sequence[str],
    jets_per_class: int,
    out_dir: str | Path,
    seed: int,
    workers: int = 1,
    jets_per_file: int = 100_000,
    progress: bool = True,
    pt_range: tuple[float, float] = (500.0, 1000.0),
    eta_max: float = 2.0,
    shard_index: int = 0,
    num_shards: int = 1,
) -> list[Path]:
    """classes="all" or a list / comma string of short names. Returns the ROOT files of this shard (sorted)."""
    return generate_dataset_with_stats(**locals())[0]


def generate_dataset_with_stats(
    *,
    classes: str | Sequence[str],
    jets_per_class: int,
    out_dir: str | Path,
    seed: int,
    workers: int = 1,
    jets_per_file: int = 100_000,
    progress: bool = True,
    pt_range: tuple[float, float] = (500.0, 1000.0),
    eta_max: float = 2.0,
    shard_index: int = 0,
    num_shards: int = 1,
) -> tuple[list[Path], list[FileResult]]:
    """Like :func:`generate_dataset`, also returning what each file task did (for throughput reports)."""
    names = parse_classes(classes)
    for what, value in (("jets_per_class", jets_per_class), ("jets_per_file", jets_per_file), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    selection = make_selection(pt_range, eta_max)
    shard_tasks([], shard_index, num_shards)  # validate the shard arguments before touching the disk
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(
        names, jets_per_class=jets_per_class, jets_per_file=jets_per_file, out_dir=out, seed=seed, selection=selection
    )
    tasks = shard_tasks(tasks, shard_index, num_shards)
    if not tasks:
        return [], []
    results = _run_all(tasks, min(workers, len(tasks)), progress)
    return sorted(r.path for r in results), results


def throughput_summary(results: list[FileResult], wall_seconds: float) -> str:
    """Report: jets generated, jets/s per worker (per wall and per CPU second of the workers) and per class."""
    made = [r for r in results if not r.skipped]
    kept = len(results) - len(made)

    def rates(rs: list[FileResult]) -> tuple[int, float, float]:
        n = sum(r.n_jets for r in rs)
        wall, cpu = sum(r.seconds for r in rs), sum(r.cpu_seconds for r in rs)
        return n, n / wall if wall > 0 else float("nan"), n / cpu if cpu > 0 else float("nan")

    n, per_wall, per_cpu = rates(made)
    overall = n / wall_seconds if wall_seconds > 0 else float("nan")
    lines = [
        f"generated {n} jets in {len(made)} file(s) ({kept} complete file(s) kept) in {wall_seconds:.1f} s: "
        f"{overall:.1f} jets/s overall; per worker {per_wall:.1f} jets/s (wall) = {per_cpu:.1f} jets per CPU-second "
        "(Pythia init included)"
    ]
    for name in dict.fromkeys(r.class_name for r in made):
        rs = [r for r in made if r.class_name == name]
        jets, w, c = rates(rs)
        events = sum(r.events for r in rs)
        lines.append(
            f"  {name:5s} {jets:7d} jets  {w:6.1f} jets/s per worker (wall)  {c:6.1f} jets per CPU-s  "
            f"{events / max(jets, 1):.2f} events/jet"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m data.generate", description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default="all", help=f"'all' or comma list of: {','.join(CLASSES)}")
    ap.add_argument("--jets-per-class", type=int, required=True)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--jets-per-file", type=int, default=100_000)
    ap.add_argument("--pt-min", type=float, default=500.0)
    ap.add_argument("--pt-max", type=float, default=1000.0)
    ap.add_argument("--eta-max", type=float, default=2.0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--num-shards", type=int, default=1, help="split the file plan into this many shards (array jobs)")
    ap.add_argument("--shard-index", type=int, default=0, help="which shard this job writes, 0 .. num-shards - 1")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        paths, results = generate_dataset_with_stats(
            classes=args.classes,
            jets_per_class=args.jets_per_class,
            out_dir=args.out,
            seed=args.seed,
            workers=args.workers,
            jets_per_file=args.jets_per_file,
            progress=not args.no_progress,
            pt_range=(args.pt_min, args.pt_max),
            eta_max=args.eta_max,
            shard_index=args.shard_index,
            num_shards=args.num_shards,
        )
    except ValueError as err:
        ap.error(str(err))
    if not paths:
        print(f"shard {args.shard_index} of {args.num_shards}: no file to write (fewer files in the plan than shards)")
        return
    print(f"wrote {len(paths)} file(s) to {args.out}")
    print(throughput_summary(results, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
