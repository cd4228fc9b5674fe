"""Scaling benchmark: dense vs DSA (indexer) attention, forward time and peak memory over N particles or hits.

One harness for every workload (``--model``): ``jets`` is ParT vs DSA-ParT (``networks/dsa_part.py``, small model,
N particles per jet), ``tracks`` the hit transformer with dense attention and pair features vs DSA
(``networks/track_transformer.py``, default model, N hits per event). Models are built as weaver builds them
(``get_model(data_config, **options)``; ``-o KEY VALUE`` adds options to both modes), on synthetic inputs with all
N elements real (the cost does not depend on their values). Each (N, mode) point runs in its own subprocess (eval,
``torch.inference_mode``) under an address-space limit, so a point that runs out of memory is reported as such
instead of killing the script. Memory is the child's peak RSS during the forwards minus its RSS just before them
(model and inputs built; torch allocations are invisible to tracemalloc); time is the median of the forwards after
the first. Not a test: run it by hand, e.g.

    .venv/bin/python -m profiling.bench_scaling --model jets --sizes 128 256 512 1024 2048 4096 8192 --dense-max 4096
    .venv/bin/python -m profiling.bench_scaling --model tracks --sizes 500 1000 2000 4000 --out bench.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiling import loading
from profiling.measure import current_rss_mb, peak_rss_mb

__all__ = ["WORKLOADS", "Workload", "benchmark", "build_parser", "main", "measure", "point_options", "ratio_table",
           "run_point"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def _jet_inputs(data_config: Any, batch: int, n: int, seed: int) -> list[Any]:
    """``batch`` synthetic jets of ``n`` real particles in ``n`` slots, in the data config's input order."""
    x = loading.synthetic_inputs(data_config, batch_size=batch, multiplicity=n, length=n, seed=seed)
    return [x[k] for k in data_config.input_names]


def _hit_inputs(data_config: Any, batch: int, n: int, seed: int) -> list[Any]:
    """``batch`` synthetic events of ``n`` real hits, in the data config's input order."""
    x = loading.synthetic_hits(batch_size=batch, length=n, seed=seed)
    return [x[k] for k in data_config.input_names]


@dataclass(frozen=True)
class Workload:
    """What one benchmark compares: the network config, its data config and options, how to make inputs of size N,
    and the defaults of the CLI for it."""

    network: str  # relative to the repository root
    data_config: str
    size_name: str  # what N counts, for the table and the JSON
    make_inputs: Callable[[Any, int, int, int], list[Any]]  # (data_config, batch, N, seed) -> model inputs
    modes: dict[str, dict[str, Any]]  # mode name -> its own options
    base_options: dict[str, Any] = field(default_factory=dict)  # options of both modes
    sizes: tuple[int, ...] = ()
    dense_max: int | None = None  # default --dense-max
    repeats: int = 2
    timeout_s: float = 600.0
    ref_size: int = 1024  # DSA t(N) / t(ref) column (the smallest N when not measured)


WORKLOADS: dict[str, Workload] = {
    # small embeddings so dense fits at moderate N on a CPU
    "jets": Workload(
        network="networks/dsa_part.py", data_config="data/JetClass/JetClass_kin.yaml", size_name="particles",
        make_inputs=_jet_inputs,
        base_options={"embed_dims": (32, 32), "pair_embed_dims": (16, 16), "num_heads": 2, "num_layers": 2,
                      "num_cls_layers": 1, "trim": False},
        modes={"dense": {"attention": "softmax"},
               "dsa": {"attention": "dsa_indexer", "topk": 32, "indexer_heads": 2, "indexer_dim": 16}},
        sizes=(128, 256, 512, 1024, 2048, 4096, 8192), dense_max=4096, repeats=3, timeout_s=120.0, ref_size=1024),
    # the default track model (its TrackConfig defaults; DSA keeps topk 64)
    "tracks": Workload(
        network="networks/track_transformer.py", data_config="data/Tracks/tracks.yaml", size_name="hits",
        make_inputs=_hit_inputs,
        modes={"dense": {"attention": "softmax"}, "dsa": {"attention": "dsa_indexer"}},
        sizes=(500, 1000, 2000, 4000), repeats=2, timeout_s=600.0, ref_size=1000),
}


def point_options(workload: str, mode: str, options: dict[str, Any], *, topk: int | None = None) -> dict[str, Any]:
    """The ``get_model`` options of one mode: workload defaults, the mode's own (``topk`` for DSA), then ``-o``."""
    wl = WORKLOADS[workload]
    if mode not in wl.modes:
        raise ValueError(f"mode {mode!r}; valid modes are {sorted(wl.modes)}")
    mode_opts = {**wl.modes[mode], **({"topk": topk} if topk is not None and mode == "dsa" else {})}
    return {**wl.base_options, **mode_opts, **options}


def run_point(workload: str, size: int, mode: str, options: dict[str, Any], *, batch: int, repeats: int,
              threads: int, seed: int = 0, train: bool = False) -> dict[str, Any]:
    """Build the model, run ``1 + repeats`` forwards on synthetic inputs of ``size``; memory of all, time of the
    repeats (median). ``train``: training steps instead (train mode, forward and backward of a dummy loss with the
    model's auxiliary terms): the memory a training batch needs. Runs in the calling process: ``measure`` is the
    subprocess-isolated version."""
    import torch

    wl = WORKLOADS[workload]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    data_config = loading.load_data_config(REPO_ROOT / wl.data_config)
    network = loading.import_network_config(REPO_ROOT / wl.network, name=f"_bench_{workload}_network")
    model, _ = network.get_model(data_config, **options)
    model.train(train)
    inputs = wl.make_inputs(data_config, batch, size, seed)
    before = current_rss_mb()
    times = []
    with torch.inference_mode(not train):
        for _ in range(1 + repeats):
            start = time.perf_counter()
            out = model(*inputs)
            if train:
                aux = getattr(getattr(model, "mod", model), "pop_aux_loss", lambda: None)()
                (out.square().mean() + (0.0 if aux is None else aux)).backward()
                model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    if out.shape[0] != batch or not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"bad output {tuple(out.shape)} at {size} {wl.size_name} ({mode})")
    timed = sorted(times[1:]) if repeats > 0 else times
    return {"size": size, "mode": mode, "status": "ok", "params": loading.count_parameters(model),
            "rss_before_mb": before, "peak_mb": max(peak_rss_mb() - before, 0.0), "first_s": times[0],
            "time_s": timed[len(timed) // 2]}


def measure(workload: str, size: int, mode: str, options: dict[str, Any], *, batch: int, repeats: int, threads: int,
            memory_limit_gb: float, timeout_s: float, train: bool = False) -> dict[str, Any]:
    """``run_point`` in a subprocess under an address-space limit; out-of-memory, crashes and timeouts become a
    status."""
    job = repr({"workload": workload, "size": size, "mode": mode, "options": options, "batch": batch,
                "repeats": repeats, "threads": threads, "memory_limit_gb": memory_limit_gb, "train": train})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "profiling.bench_scaling", "--child", job], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"size": size, "mode": mode, "status": f"timeout > {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    oom = proc.returncode < 0 or "allocate" in tail[0] or "MemoryError" in tail[0]
    status = f"out of memory (> {memory_limit_gb:g} GB)" if oom else f"failed: {tail[0][:160]}"
    return {"size": size, "mode": mode, "status": status}


def _child(job_text: str) -> None:
    """Subprocess entry: apply the memory limit, run one point, print its JSON."""
    job = ast.literal_eval(job_text)  # a Python literal, so tuple options stay tuples
    limit = int(job["memory_limit_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps(run_point(job["workload"], job["size"], job["mode"], job["options"], batch=job["batch"],
                               repeats=job["repeats"], threads=job["threads"], train=job.get("train", False))))


def benchmark(workload: str, sizes: Sequence[int], modes: Sequence[str], options: dict[str, dict[str, Any]], *,
              dense_max: int | None, batch: int, repeats: int, threads: int, memory_limit_gb: float,
              timeout_s: float, progress: bool = True, train: bool = False) -> list[dict[str, Any]]:
    """Every (N, mode) point in its own subprocess; dense is skipped above ``dense_max`` (None: never)."""
    from tqdm import tqdm

    results = []
    for size, mode in tqdm([(n, m) for n in sizes for m in modes], desc="bench points", disable=not progress):
        if mode == "dense" and dense_max is not None and size > dense_max:
            results.append({"size": size, "mode": mode, "status": f"skipped (N > {dense_max})"})
            continue
        results.append(measure(workload, size, mode, options[mode], batch=batch, repeats=repeats, threads=threads,
                               memory_limit_gb=memory_limit_gb, timeout_s=timeout_s, train=train))
    return results


def ratio_table(results: Sequence[dict[str, Any]], *, size_name: str = "N", ref_size: int | None = None) -> str:
    """Markdown table per N: dense and DSA time and peak memory, their dense/DSA ratios, and DSA t(N)/t(ref) where
    ``ref_size`` (default: the smallest N) has a DSA result. A point without result shows its status."""
    by_key = {(r["size"], r["mode"]): r for r in results}
    ok = {key: r for key, r in by_key.items() if r.get("status") == "ok"}
    sizes = sorted({r["size"] for r in results})
    dsa_sizes = [n for n in sizes if (n, "dsa") in ok]
    ref = ref_size if (ref_size, "dsa") in ok else (dsa_sizes[0] if dsa_sizes else None)
    rows = [f"| {size_name} | dense time s | DSA time s | time dense/DSA | dense peak MiB | DSA peak MiB "
            f"| memory dense/DSA | DSA t(N)/t({'ref' if ref is None else ref}) |", "|---" * 8 + "|"]
    for n in sizes:
        d, s = by_key.get((n, "dense"), {}), by_key.get((n, "dsa"), {})
        both = (n, "dense") in ok and (n, "dsa") in ok
        tim = f"{d['time_s'] / max(s['time_s'], 1e-9):.1f}x" if both else "-"
        mem = f"{d['peak_mb'] / max(s['peak_mb'], 1e-9):.1f}x" if both else "-"
        rel = f"{s['time_s'] / ok[(ref, 'dsa')]['time_s']:.2f}" if (n, "dsa") in ok else "-"
        rows.append(f"| {n} | {_cell(d, 'time_s', '.4f', status=True)} | {_cell(s, 'time_s', '.4f', status=True)} "
                    f"| {tim} | {_cell(d, 'peak_mb', '.0f')} | {_cell(s, 'peak_mb', '.0f')} | {mem} | {rel} |")
    return "\n".join(rows)


def _cell(r: dict[str, Any], key: str, fmt: str, *, status: bool = False) -> str:
    """The formatted value of an ok point; else its status (``status``: 'not run' when absent) or '-'."""
    if r.get("status") == "ok":
        return format(r[key], fmt)
    return r.get("status", "not run") if status else "-"


def build_parser() -> argparse.ArgumentParser:
    """The CLI; defaults that depend on the workload are None here and filled in by ``main``."""
    ap = argparse.ArgumentParser(prog="python -m profiling.bench_scaling", description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(WORKLOADS),
                    help="workload: jets (ParT vs DSA-ParT over N particles) or tracks (hit transformer, N hits)")
    ap.add_argument("--sizes", "--hits", type=int, nargs="+", default=None,
                    help="N values (particles or hits; default: the workload's)")
    ap.add_argument("--modes", nargs="+", choices=["dense", "dsa"], default=["dense", "dsa"])
    ap.add_argument("--dense-max", type=int, default=None,
                    help="skip dense above this N (default: jets 4096, tracks none; 0: no limit)")
    ap.add_argument("--topk", type=int, default=None, help="keys kept per query in DSA mode (default: the model's)")
    loading.add_network_option_argument(ap, help="network option as for weaver (-o num_heads 4), both modes")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--train", action="store_true",
                    help="time and measure training steps (forward + backward) instead of inference forwards")
    ap.add_argument("--repeats", type=int, default=None, help="timed forwards after the first (jets 3, tracks 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (2 threads on an oversubscribed 2-core machine make OpenMP spin)")
    ap.add_argument("--memory-limit-gb", type=float, default=16.0,
                    help="address-space limit of each point's process (the machine has to keep room for others)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per point (jets 120, tracks 600)")
    ap.add_argument("--ref-size", type=int, default=None, help="N of the DSA t(N)/t(ref) column")
    ap.add_argument("--out", "--json", dest="out", type=Path, default=None, help="write all results as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """CLI: run every (N, mode) point in its own subprocess, print the table, optionally write JSON."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return []
    if args.model is None:
        ap.error(f"--model is required ({', '.join(sorted(WORKLOADS))})")
    wl = WORKLOADS[args.model]
    sizes = args.sizes or list(wl.sizes)
    repeats = wl.repeats if args.repeats is None else args.repeats
    dense_max = wl.dense_max if args.dense_max is None else (args.dense_max or None)
    try:
        user = loading.parse_network_options(args.network_option)
    except ValueError as err:
        ap.error(str(err))
    if min(sizes) <= 0 or repeats < 0 or args.threads < 1 or args.batch < 1:
        ap.error("--sizes must be > 0, --repeats >= 0, --threads >= 1 and --batch >= 1")
    options = {m: point_options(args.model, m, user, topk=args.topk) for m in args.modes}
    results = benchmark(args.model, sizes, args.modes, options, dense_max=dense_max, batch=args.batch,
                        repeats=repeats, threads=args.threads, memory_limit_gb=args.memory_limit_gb,
                        timeout_s=args.timeout or wl.timeout_s, progress=not args.no_progress, train=args.train)
    what = "training steps" if args.train else "eval"
    print(f"{args.model}: {options}; batch {args.batch}, {what}, {args.threads} thread(s), {repeats} repeat(s), "
          f"limit {args.memory_limit_gb:g} GB per point")
    print(ratio_table(results, size_name=wl.size_name, ref_size=args.ref_size or wl.ref_size))
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "size_name": wl.size_name, "options": options,
                                        "batch": args.batch, "repeats": repeats, "threads": args.threads,
                                        "train": args.train,
                                        "memory_limit_gb": args.memory_limit_gb, "rows": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
