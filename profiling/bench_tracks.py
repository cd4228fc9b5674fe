"""Memory and time of one forward of the track hit transformer: dense attention with pair features vs DSA (indexer).

Each (hits, mode) point runs in its own subprocess (batch 1, eval, ``torch.inference_mode``) under an address-space
limit, so a dense point that runs out of memory is reported as such instead of killing the script. Memory is the
child's peak resident set during the forward minus its resident set just before it (model and inputs already
built). Inputs are synthetic hits on the PMT sphere (the cost does not depend on their values). Usage:
``python -m profiling.bench_tracks --hits 500 1000 2000 4000 [--out bench.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_CONFIG = REPO_ROOT / "data" / "Tracks" / "tracks.yaml"
NETWORK = REPO_ROOT / "networks" / "track_transformer.py"
MODES = {"dense": {"attention": "dense"}, "dsa": {"attention": "dsa", "dsa_mode": "indexer"}}


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_point(n_hits: int, mode: str, options: dict[str, Any], *, repeats: int, threads: int,
              seed: int = 0) -> dict[str, Any]:
    """Build the model, run ``1 + repeats`` forwards on ``n_hits`` synthetic hits; memory of the first, time of the
    rest (median). Runs in the calling process: use ``measure`` for the subprocess-isolated version."""
    import torch
    from weaver.utils.dataset import DataConfig
    from weaver.utils.import_tools import import_module

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    network = import_module(str(NETWORK), name="_bench_track_network")
    data_config = DataConfig.load(str(DATA_CONFIG), load_observers=False)
    model, _ = network.get_model(data_config, **options, **MODES[mode])
    model.eval()
    xyz = torch.nn.functional.normalize(torch.randn(1, 3, n_hits), dim=1) * 1.1
    t = torch.rand(1, 1, n_hits) * 3.0
    points = torch.cat((xyz, t), dim=1)
    features = torch.cat((xyz, t - 1.0, torch.randn(1, 1, n_hits)), dim=1)
    mask = torch.ones(1, 1, n_hits)
    params = sum(p.numel() for p in model.parameters())
    before = _rss_mb()
    times = []
    with torch.inference_mode():
        for _ in range(1 + repeats):
            start = time.perf_counter()
            out = model(points, features, mask)
            times.append(time.perf_counter() - start)
    if out.shape != (1, 6) or not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"bad output {tuple(out.shape)} at {n_hits} hits ({mode})")
    timed = sorted(times[1:]) if repeats > 0 else times
    return {"hits": n_hits, "mode": mode, "status": "ok", "params": params, "rss_before_mb": before,
            "peak_mb": _peak_rss_mb() - before, "first_s": times[0], "time_s": timed[len(timed) // 2]}


def measure(n_hits: int, mode: str, options: dict[str, Any], *, repeats: int, threads: int, memory_limit_gb: float,
            timeout_s: float) -> dict[str, Any]:
    """``run_point`` in a subprocess under an address-space limit; out-of-memory and crashes become a status."""
    job = json.dumps({"hits": n_hits, "mode": mode, "options": options, "repeats": repeats, "threads": threads,
                      "memory_limit_gb": memory_limit_gb})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "profiling.bench_tracks", "--child", job], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"hits": n_hits, "mode": mode, "status": f"timeout > {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    oom = proc.returncode < 0 or "allocate" in tail[0] or "MemoryError" in tail[0]
    status = f"out of memory (> {memory_limit_gb:g} GB)" if oom else f"failed: {tail[0][:160]}"
    return {"hits": n_hits, "mode": mode, "status": status}


def _child(job_json: str) -> None:
    """Subprocess entry: apply the memory limit, run one point, print its JSON."""
    job = json.loads(job_json)
    limit = int(job["memory_limit_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps(run_point(job["hits"], job["mode"], job["options"], repeats=job["repeats"],
                               threads=job["threads"])))


def ratio_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: per hit count, dense and DSA memory/time and the dense/DSA ratios."""
    by_key = {(r["hits"], r["mode"]): r for r in results}
    rows = ["| hits | dense peak MiB | dense time s | DSA peak MiB | DSA time s | memory dense/DSA | time dense/DSA |",
            "|---|---|---|---|---|---|---|"]
    for hits in sorted({r["hits"] for r in results}):
        d, s = by_key.get((hits, "dense"), {}), by_key.get((hits, "dsa"), {})

        def cell(r: dict[str, Any], key: str, fmt: str) -> str:
            return format(r[key], fmt) if r.get("status") == "ok" else r.get("status", "not run")

        ok = d.get("status") == "ok" and s.get("status") == "ok"
        mem = f"{d['peak_mb'] / max(s['peak_mb'], 1e-9):.1f}x" if ok else "-"
        tim = f"{d['time_s'] / max(s['time_s'], 1e-9):.1f}x" if ok else "-"
        rows.append(f"| {hits} | {cell(d, 'peak_mb', '.0f')} | {cell(d, 'time_s', '.2f')} "
                    f"| {cell(s, 'peak_mb', '.0f')} "
                    f"| {cell(s, 'time_s', '.2f')} | {mem} | {tim} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """CLI: run every (hits, mode) point in its own subprocess and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    ap.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["dense", "dsa"])
    ap.add_argument("--option", "-o", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="network option as for weaver (-o topk 64); applied to both modes")
    ap.add_argument("--repeats", type=int, default=2, help="timed forwards after the first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-limit-gb", type=float, default=16.0,
                    help="address-space limit of each point's process (the machine has to keep room for others)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per point")
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return []
    import ast

    try:
        options = {k: ast.literal_eval(v) for k, v in args.option}
    except (ValueError, SyntaxError) as err:
        ap.error(f"bad -o value: {err}")
    if any(h <= 0 for h in args.hits) or args.repeats < 0 or args.threads < 1:
        ap.error("--hits must be > 0, --repeats >= 0 and --threads >= 1")
    from tqdm import tqdm

    results = []
    points = [(h, m) for h in args.hits for m in args.modes]
    for hits, mode in tqdm(points, desc="bench points"):
        results.append(measure(hits, mode, options, repeats=args.repeats, threads=args.threads,
                               memory_limit_gb=args.memory_limit_gb, timeout_s=args.timeout))
    print(f"options: {options or 'defaults'}; batch 1, eval, {args.threads} thread(s), "
          f"limit {args.memory_limit_gb:g} GB per point")
    print(ratio_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
