"""Timers, torch.profiler traces, memory, subnormal counts and interleaved A/B latency comparisons.

The one home of process memory readings (``peak_rss_mb``, ``current_rss_mb``, ``available_memory_mb``).
"""

from __future__ import annotations

import os
import resource
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import benchmark

__all__ = [
    "Latency", "available_memory_mb", "bootstrap_ci", "cuda_memory", "current_rss_mb", "flush_denormal_effect",
    "interleaved_latency", "one_call_seconds", "peak_rss_mb", "profile_ops", "subnormal_activations",
    "subnormal_weights", "summarize_samples", "time_forward",
]


@dataclass
class Latency:
    """Per-call wall-clock latency of one forward pass (seconds) with its spread."""

    median_s: float
    iqr_s: float
    q25_s: float
    q75_s: float
    runs: int
    number_per_run: int
    batch_size: int

    @property
    def jets_per_s(self) -> float:
        """Throughput implied by the median latency."""
        return self.batch_size / self.median_s

    def to_dict(self) -> dict[str, float]:
        """JSON form, with throughput included."""
        return {**asdict(self), "jets_per_s": self.jets_per_s}


def _forward_fn(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(*inputs)

    return run


def _timer(model: torch.nn.Module, inputs: Sequence[torch.Tensor], num_threads: int) -> benchmark.Timer:
    return benchmark.Timer(stmt="run()", globals={"run": _forward_fn(model, inputs)}, num_threads=num_threads)


def time_forward(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    num_threads: int,
    min_run_time: float = 1.0,
    min_runs: int = 5,
) -> Latency:
    """Latency with ``torch.utils.benchmark.Timer`` (explicit ``num_threads``, CUDA-synchronised by the Timer).

    Fast calls: ``blocked_autorange`` for ``min_run_time`` seconds. Slow calls (one call longer than
    ``min_run_time / min_runs``): exactly ``min_runs`` single calls, so a 1-s forward costs 5 calls, not more.
    """
    timer = _timer(model, inputs, num_threads)
    first = timer.timeit(1).median
    if first * min_runs >= min_run_time:
        times, number = [first] + [timer.timeit(1).median for _ in range(min_runs - 1)], 1
    else:
        m = timer.blocked_autorange(min_run_time=min_run_time)
        times, number = list(m.times), m.number_per_run
        while len(times) < min_runs:
            times.append(timer.timeit(number).median)
    q25, med, q75 = np.percentile(times, [25, 50, 75])
    return Latency(float(med), float(q75 - q25), float(q25), float(q75), len(times), number, int(inputs[0].shape[0]))


def one_call_seconds(
    model: torch.nn.Module, inputs: Sequence[torch.Tensor], *, num_threads: int, number: int = 1
) -> float:
    """Mean seconds per call over ``number`` calls (one sample of an interleaved comparison)."""
    return float(_timer(model, inputs, num_threads).timeit(number).median)


def bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, stat: Callable[[np.ndarray], float] = np.median, n_boot: int = 2000,
    seed: int = 0, level: float = 0.95,
) -> tuple[float, float, float]:
    """Ratio stat(b)/stat(a) with a percentile-bootstrap confidence interval."""
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ratios = np.empty(n_boot)
    for i in range(n_boot):
        ratios[i] = stat(rng.choice(xb, xb.size)) / stat(rng.choice(xa, xa.size))
    lo, hi = np.percentile(ratios, [50 * (1 - level), 50 * (1 + level)])
    return float(stat(xb) / stat(xa)), float(lo), float(hi)


def interleaved_latency(
    models: dict[str, torch.nn.Module],
    inputs: Sequence[torch.Tensor],
    *,
    rounds: int,
    num_threads: int,
    number: int = 1,
    setup: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Time models in interleaved order (A,B,A,B,...; the order flips every round) so drifts hit all equally."""
    names = list(models)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if setup is not None:
                setup(name)
            samples[name].append(one_call_seconds(models[name], inputs, num_threads=num_threads, number=number))
    return samples


def summarize_samples(samples: Sequence[float]) -> dict[str, float]:
    """Median and IQR of latency samples."""
    q25, med, q75 = np.percentile(np.asarray(samples, dtype=float), [25, 50, 75])
    return {"median_s": float(med), "iqr_s": float(q75 - q25), "n": len(samples)}


# ----------------------------------------------------------------------------------------------------------------
# torch.profiler
# ----------------------------------------------------------------------------------------------------------------


def profile_ops(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    device: torch.device,
    trace_path: Path,
    wait: int = 0,
    warmup: int = 1,
    active: int = 3,
    top: int = 15,
) -> dict[str, Any]:
    """Profile ``active`` scheduled steps: top ops by self CPU/CUDA time, memory, and a Perfetto-loadable trace."""
    events = _profiled_events(model, inputs, device=device, trace_path=trace_path, wait=wait, warmup=warmup,
                              active=active)
    rows = [r for r in (_op_row(e, active) for e in events) if not r["op"].startswith("ProfilerStep")]
    return {
        "steps": {"wait": wait, "warmup": warmup, "active": active},
        "per_step_self_cpu_ms": sum(r["self_cpu_ms"] for r in rows),
        "top_self_cpu": sorted(rows, key=lambda r: -r["self_cpu_ms"])[:top],
        "top_self_device": sorted(rows, key=lambda r: -r["self_device_ms"])[:top] if device.type == "cuda" else [],
        "cpu_alloc_mb_per_step": sum(max(r["self_cpu_mem_mb"], 0.0) for r in rows),
        "trace": trace_path.name,
    }


def _profiled_events(model: torch.nn.Module, inputs: Sequence[torch.Tensor], *, device: torch.device,
                     trace_path: Path, wait: int, warmup: int, active: int) -> Any:
    """Run the profiler schedule, write the Chrome trace and return the averaged events of the active steps."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    captured: dict[str, Any] = {}

    def on_ready(prof: Any) -> None:
        prof.export_chrome_trace(str(trace_path))
        captured["events"] = prof.key_averages()

    trace_path.parent.mkdir(parents=True, exist_ok=True)
    with profile(
        activities=activities,
        schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=on_ready,
        profile_memory=True,
        record_shapes=False,
    ) as prof:
        for _ in range(wait + warmup + active):
            with torch.inference_mode():
                model(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            prof.step()
    return captured.get("events") or prof.key_averages()


def _op_row(event: Any, active: int) -> dict[str, Any]:
    """One op's per-step times and allocations."""
    return {
        "op": event.key,
        "calls": int(event.count) // active,
        "self_cpu_ms": event.self_cpu_time_total / 1e3 / active,
        "cpu_total_ms": event.cpu_time_total / 1e3 / active,
        "self_device_ms": getattr(event, "self_device_time_total", 0.0) / 1e3 / active,
        "self_cpu_mem_mb": event.self_cpu_memory_usage / 2**20 / active,
        "self_device_mem_mb": getattr(event, "self_device_memory_usage", 0) / 2**20 / active,
    }


# ----------------------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------------------


def available_memory_mb() -> float | None:
    """Host memory available for new allocations (Linux ``MemAvailable``), in MiB; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``resource.getrusage``; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cuda_memory(
    model: torch.nn.Module, inputs: Sequence[torch.Tensor], *, device: torch.device, snapshot_path: Path | None
) -> dict[str, Any]:
    """Peak CUDA memory of one forward; optionally a ``_record_memory_history`` snapshot (pickle for memory_viz)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    if snapshot_path is not None:
        torch.cuda.memory._record_memory_history(max_entries=100000)
    with torch.inference_mode():
        model(*inputs)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    if snapshot_path is not None:
        torch.cuda.memory._dump_snapshot(str(snapshot_path))
        torch.cuda.memory._record_memory_history(enabled=None)
    return {
        "max_allocated_mb": peak / 2**20,
        "forward_extra_mb": (peak - base) / 2**20,
        "snapshot": snapshot_path.name if snapshot_path else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# subnormal numbers
# ----------------------------------------------------------------------------------------------------------------


def _subnormal_count(x: torch.Tensor) -> tuple[int, int]:
    if not x.is_floating_point():
        return 0, 0
    tiny = torch.finfo(x.dtype).tiny
    return int(((x != 0) & (x.abs() < tiny)).sum()), int(x.numel())


def subnormal_weights(model: torch.nn.Module) -> dict[str, Any]:
    """Subnormal values among parameters and floating buffers."""
    sub = total = 0
    worst: dict[str, int] = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        s, n = _subnormal_count(t.detach())
        sub, total = sub + s, total + n
        if s:
            worst[name] = s
    top = dict(sorted(worst.items(), key=lambda kv: -kv[1])[:5])
    return {"subnormal": sub, "total": total, "fraction": sub / max(total, 1), "top_tensors": top}


def subnormal_activations(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Subnormal values in every leaf module's tensor outputs during one forward (forward hooks)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def hook(name: str) -> Callable:
        def fn(m: torch.nn.Module, args: tuple, out: Any) -> None:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for o in outs:
                if isinstance(o, torch.Tensor):
                    s, n = _subnormal_count(o)
                    counts[name][0] += s
                    counts[name][1] += n

        return fn

    with _leaf_output_hooks(model, hook), torch.inference_mode():
        model(*inputs)
    sub = sum(v[0] for v in counts.values())
    total = sum(v[1] for v in counts.values())
    top = {k: v[0] for k, v in sorted(counts.items(), key=lambda kv: -kv[1][0])[:5] if v[0]}
    return {"subnormal": sub, "total": total, "fraction": sub / max(total, 1), "top_modules": top}


@contextmanager
def _leaf_output_hooks(model: torch.nn.Module, make_hook: Callable[[str], Callable]) -> Iterator[None]:
    """Forward hooks ``make_hook(name)`` on every leaf module while the block runs, removed afterwards."""
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    handles = [m.register_forward_hook(make_hook(n)) for n, m in leaves]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def flush_denormal_effect(
    model: torch.nn.Module, inputs: Sequence[torch.Tensor], *, rounds: int, num_threads: int
) -> dict[str, Any]:
    """Interleaved latency with ``torch.set_flush_denormal`` off/on (restored to off afterwards)."""
    supported = torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    if not supported:
        return {"supported": False}
    try:
        samples = interleaved_latency(
            {"ftz_off": model, "ftz_on": model}, inputs, rounds=rounds, num_threads=num_threads,
            setup=lambda name: torch.set_flush_denormal(name == "ftz_on"),
        )
    finally:
        torch.set_flush_denormal(False)
    ratio, lo, hi = bootstrap_ci(samples["ftz_off"], samples["ftz_on"])
    return {
        "supported": True,
        "off": summarize_samples(samples["ftz_off"]),
        "on": summarize_samples(samples["ftz_on"]),
        "ratio_on_over_off": ratio,
        "ratio_ci95": [lo, hi],
        "samples": samples,
    }
