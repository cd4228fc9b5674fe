"""Profile the forward pass of any weaver network config: latency, throughput, ops, memory, FLOPs, subnormals.

Example::

    python -m profiling.forward --network-config networks/part.py --data-config data/JetClass/JetClass_kin.yaml \\
        --random --device cpu --batch-sizes 1,64 --input 'jets/*.root' --out runs/part
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from profiling import flops as flops_mod
from profiling import loading, measure, report
from profiling.attention import attention_section

__all__ = ["MemoryGuard", "ProfileConfig", "build_parser", "compare_models", "config_from_args", "forward_alloc_mb",
           "latency_vs_batch", "main", "min_input_length", "multiplicity_sweep", "prediction_summary", "run_profile",
           "subnormal_summary"]


@dataclass(kw_only=True)
class ProfileConfig:
    """Everything one profiling run needs (the CLI maps 1:1 onto it)."""

    network_config: str
    data_config: str
    weights: str | None = None  # None = random init (``--random``)
    compare_weights: str | None = None  # B side of trained-vs-other; default: a fresh random init
    device: str = "cpu"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64, 512])
    profile_batch: int | None = None  # batch for profiler/FLOPs/multiplicity sweeps (default: closest to 64)
    input_glob: list[str] | None = None
    synthetic: bool = False
    synthetic_multiplicity: tuple[int, int] = (20, 80)
    multiplicities: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    out_dir: str = "profile_out"
    options: dict[str, Any] = field(default_factory=dict)
    threads: int = 2
    min_run_time: float = 1.0
    ab_rounds: int = 8
    ftz_rounds: int = 3
    always_ftz: bool = False  # single-model runs: measure flush-denormal even without subnormal values
    for_inference: bool = False  # False: as weaver --predict builds it (trimming); True: as for ONNX export
    max_jets: int = 2048
    seed: int = 0
    quiet: bool = False
    attention: bool = False  # attention structure per layer and head, and what DSA would save (profiling/attention)


def _pick_profile_batch(cfg: ProfileConfig, batch_sizes: Sequence[int], guard: MemoryGuard) -> int:
    """``--profile-batch`` if it fits in memory, else the measured batch size closest to 64."""
    if cfg.profile_batch is not None and guard.fits(cfg.profile_batch):
        return cfg.profile_batch
    return min(batch_sizes, key=lambda b: (abs(math.log(b / 64)), b))


@dataclass
class MemoryGuard:
    """Skips batch sizes whose forward would not fit in host memory.

    On CPU an oversized batch is not an error but a kill by the OOM killer (the hit transformer's dense attention
    at 2048 hits and batch 512 asks for ~70 GB). Batch sizes run in increasing order; the growth of the process's
    peak RSS over the last one run, scaled linearly, predicts the next. Without a prediction (the first batch, or
    no ``/proc/meminfo``) the batch runs.
    """

    base_mb: float  # peak RSS before the first forward of the sweep
    limit_mb: float | None  # peak RSS allowed: base + share of the memory available then (None: no guard)
    last: tuple[int, float] | None = None  # (batch size, peak RSS after it)

    SHARE = 0.8

    @classmethod
    def start(cls, device: torch.device) -> MemoryGuard:
        base, available = measure.peak_rss_mb(), measure.available_memory_mb()
        limit = None if device.type != "cpu" or available is None else base + cls.SHARE * available
        return cls(base, limit)

    def projected_mb(self, batch: int) -> float | None:
        if self.last is None:
            return None
        size, peak = self.last
        return self.base_mb + max(peak - self.base_mb, 0.0) * batch / size

    def fits(self, batch: int) -> bool:
        projected = self.projected_mb(batch)
        return self.limit_mb is None or projected is None or projected <= self.limit_mb

    def record(self, batch: int) -> None:
        self.last = (batch, measure.peak_rss_mb())

    def note(self, batch: int) -> str:
        return (f"batch {batch} skipped: its forward would take the process to about "
                f"{self.projected_mb(batch) / 1024:.1f} GiB (scaled from batch {self.last[0]}), above the "
                f"{self.limit_mb / 1024:.1f} GiB this machine has room for")


def latency_vs_batch(cfg: ProfileConfig, model: torch.nn.Module, pool: dict[str, torch.Tensor],
                     names: Sequence[str], device: torch.device) -> tuple[list[dict[str, Any]], list[str], MemoryGuard]:
    """Latency and throughput per batch size, smallest first, skipping those that would not fit in memory."""
    guard = MemoryGuard.start(device)
    rows, notes = [], []
    for bs in sorted(cfg.batch_sizes):
        if not guard.fits(bs):
            notes.append(guard.note(bs))
            continue
        batch = _to(loading.take_batch(pool, names, bs), device)
        loading.warm_up(model, batch, device=device)
        rows.append(measure.time_forward(model, batch, num_threads=cfg.threads,
                                         min_run_time=cfg.min_run_time).to_dict())
        guard.record(bs)
    return rows, notes, guard


def _check_sources(cfg: ProfileConfig) -> loading.InputPlan | None:
    """Preflight the ``--input`` files before anything is built (None for ``--synthetic``)."""
    if cfg.synthetic == bool(cfg.input_glob):
        raise ValueError("give exactly one of --input FILE_GLOB or --synthetic")
    if cfg.synthetic:
        return None
    files = loading.expand_input_files(cfg.input_glob)
    return loading.plan_inputs(cfg.data_config, files, work_dir=Path(cfg.out_dir) / "inputs")


def _input_pool(cfg: ProfileConfig, plan: loading.InputPlan | None, data_config: Any,
                size: int) -> tuple[dict[str, torch.Tensor], str]:
    """Real jets (weaver's dataset, reading only what ``plan`` allows) or synthetic ones, and a description."""
    if plan is None:
        pool = loading.synthetic_inputs(
            data_config, batch_size=size, multiplicity=tuple(cfg.synthetic_multiplicity), seed=cfg.seed
        )
        lo, hi = cfg.synthetic_multiplicity
        return pool, f"synthetic jets, {lo}-{hi} particles"
    pool = loading.load_real_inputs(plan.files, plan.data_config, max_jets=min(size, cfg.max_jets))
    return pool, f"{next(iter(pool.values())).shape[0]} real jets from {len(plan.files)} file(s)"


def min_input_length(model: torch.nn.Module) -> int:
    """Fewest particle slots the model runs on: a kNN model needs k + 1. Read from a ``min_input_length``
    attribute (our network configs) or from weaver-core's ``EdgeConvBlock.k`` (anyone's ParticleNet)."""
    declared = [int(getattr(m, "min_input_length", 1)) for m in model.modules()]
    knn = [int(m.k) + 1 for m in model.modules() if type(m).__name__ == "EdgeConvBlock"]
    return max([1, *declared, *knn])


def multiplicity_sweep(cfg: ProfileConfig, model: torch.nn.Module, data_config: Any, names: Sequence[str],
                       batch_size: int, max_len: int, device: torch.device) -> tuple[list[dict[str, Any]], list[str]]:
    """Latency and FLOPs of synthetic jets of n particles, inputs padded to n slots (what an exported model costs
    on batches trimmed to n). Below the model's minimum length the inputs get masked slots up to it; a point the
    model cannot run is skipped. Returns the rows and a note per padded or skipped point."""
    min_len = min_input_length(model)
    rows, notes = [], []
    for n in [m for m in cfg.multiplicities if m <= max_len]:
        length = max(n, min_len)
        syn = loading.synthetic_inputs(data_config, batch_size=batch_size, multiplicity=n, seed=cfg.seed + n,
                                       length=length)
        batch = _to([syn[k] for k in names], device)
        try:
            n_flops = flops_mod.count_flops(model, batch).matmul_flops / batch_size  # doubles as a warm-up
        except (RuntimeError, IndexError, ValueError) as exc:
            notes.append(f"{n} particles: skipped, the model does not run on {length} slots "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
            continue
        lat = measure.time_forward(model, batch, num_threads=cfg.threads, min_run_time=cfg.min_run_time / 2,
                                   min_runs=3)
        rows.append({"multiplicity": n, "slots": length, **lat.to_dict(), "flops_per_jet": n_flops})
        if length > n:
            notes.append(f"{n} particles: inputs padded to {length} slots ({length - n} masked), the model's "
                         f"minimum input length (k-nearest neighbours need k + 1)")
    return rows, notes


def _to(batch: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [t.to(device) for t in batch]


def prediction_summary(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, float]:
    """Confidence of the outputs: mean max-probability and mean entropy (softmax applied if outputs are logits)."""
    with torch.inference_mode():
        out = model(*inputs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = out.float()
    if out.ndim != 2:
        return {}
    probs = out if torch.allclose(out.sum(dim=1), torch.ones(out.shape[0], device=out.device), atol=1e-3) and (
        out.min() >= 0) else torch.softmax(out, dim=1)
    ent = -(probs.clamp_min(1e-12).log() * probs).sum(dim=1)
    return {
        "num_classes": int(probs.shape[1]),
        "mean_max_prob": float(probs.max(dim=1).values.mean()),
        "mean_entropy": float(ent.mean()),
        "uniform_entropy": math.log(probs.shape[1]),
        "predicted_class_counts": torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).tolist(),
    }


def forward_alloc_mb(model: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Bytes allocated by one forward (sum of positive self allocations seen by the profiler), in MiB."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.inference_mode():
        model(*inputs)
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages()) / 2**20


def compare_models(
    cfg: ProfileConfig, a: loading.LoadedModel, b: loading.LoadedModel, inputs: Sequence[torch.Tensor],
    device: torch.device,
) -> dict[str, Any]:
    """Same architecture, same inputs: interleaved latency, FLOPs, memory, subnormals and outputs of A vs B."""
    loading.warm_up(b.model, inputs, device=device)
    samples = measure.interleaved_latency(
        {"A": a.model, "B": b.model}, inputs, rounds=cfg.ab_rounds, num_threads=cfg.threads
    )
    ratio, lo, hi = measure.bootstrap_ci(samples["A"], samples["B"])
    side: dict[str, Any] = {}
    for key, lm in (("A", a), ("B", b)):
        entry: dict[str, Any] = {
            "weights": lm.weights,
            "latency": measure.summarize_samples(samples[key]),
            "flops_per_jet": flops_mod.count_flops(lm.model, inputs).matmul_flops / inputs[0].shape[0],
            "subnormal_weights": measure.subnormal_weights(lm.model),
            "subnormal_activations": measure.subnormal_activations(lm.model, inputs),
            "predictions": prediction_summary(lm.model, inputs),
        }
        if device.type == "cuda":
            entry["memory_mb"] = measure.cuda_memory(lm.model, inputs, device=device, snapshot_path=None)[
                "max_allocated_mb"]
        else:
            entry["memory_mb"] = forward_alloc_mb(lm.model, inputs)
            entry["flush_denormal"] = measure.flush_denormal_effect(
                lm.model, inputs, rounds=cfg.ftz_rounds, num_threads=cfg.threads)
        side[key] = entry
    return {
        "batch_size": int(inputs[0].shape[0]),
        "rounds": cfg.ab_rounds,
        "samples": samples,
        "latency_ratio_B_over_A": ratio,
        "latency_ratio_ci95": [lo, hi],
        "A": side["A"],
        "B": side["B"],
    }


class _Phases:
    """Wall time per phase of a run (``load`` from the start) and the progress bar over the phases."""

    def __init__(self, t_start: float, steps: Sequence[str], *, quiet: bool) -> None:
        self.bar = tqdm(total=len(steps), desc="profiling", disable=quiet, file=sys.stderr)
        self.last = time.perf_counter()
        self.times: dict[str, float] = {"load": self.last - t_start}

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.times[phase] = now - self.last
        self.last = now
        self.bar.update()


def run_profile(cfg: ProfileConfig) -> dict[str, Any]:
    """Load, warm up, time, profile, count and compare; writes the report directory and returns the results."""
    t_start = time.perf_counter()
    device, out = _prepare_run(cfg)
    plan = _check_sources(cfg)
    data_config = loading.load_data_config(cfg.data_config)
    a = loading.load_model(cfg.network_config, data_config, weights=cfg.weights, options=cfg.options,
                           device=cfg.device, for_inference=cfg.for_inference, seed=cfg.seed)
    names = a.input_names
    pool, pool_desc = _input_pool(cfg, plan, data_config, max(max(cfg.batch_sizes), cfg.profile_batch or 1))
    comparing = bool(cfg.weights or cfg.compare_weights)
    phases = _Phases(t_start, ["latency", "profiler", "flops", "multiplicity", "subnormals"]
                     + (["compare"] if comparing else []) + (["attention"] if cfg.attention else []), quiet=cfg.quiet)

    latencies, memory_notes, guard = latency_vs_batch(cfg, a.model, pool, names, device)
    batch_sizes = [r["batch_size"] for r in latencies]
    pbatch = _pick_profile_batch(cfg, batch_sizes, guard)
    results = _run_description(cfg, a, pool, pool_desc, plan, device, pbatch)
    results["batch_size_notes"] = memory_notes
    results["latency_vs_batch"] = latencies
    phases.done("latency")

    pinputs = _to(loading.take_batch(pool, names, pbatch), device)
    loading.warm_up(a.model, pinputs, device=device, calls=0 if pbatch in batch_sizes else 2)
    results["profiler"], results["memory"] = _profile_ops_and_memory(a.model, pinputs, device, out)
    phases.done("profiler")

    results["flops"] = flops_mod.all_counts(a.model, pinputs)
    results["predictions"] = prediction_summary(a.model, pinputs)
    phases.done("flops")

    # latency and FLOPs vs particle multiplicity: synthetic jets of n particles, inputs padded to n (no empty
    # slots), i.e. what an exported model costs when fed batches trimmed to n particles
    max_len = next(iter(pool.values())).shape[-1]
    results["latency_vs_multiplicity"], results["multiplicity_notes"] = multiplicity_sweep(
        cfg, a.model, data_config, names, pbatch, max_len, device)
    phases.done("multiplicity")

    results["subnormals"] = subnormal_summary(cfg, a.model, pinputs, device, comparing=comparing)
    phases.done("subnormals")

    if comparing:
        b = loading.load_model(cfg.network_config, data_config, weights=cfg.compare_weights, options=cfg.options,
                               device=cfg.device, for_inference=cfg.for_inference, seed=cfg.seed + 1)
        results["compare"] = compare_models(cfg, a, b, pinputs, device)  # A = --weights/random, B = other
        phases.done("compare")
    if cfg.attention:
        results["attention"] = attention_section(cfg, a, data_config, pinputs, out)
        phases.done("attention")
    phases.bar.close()
    results["memory"]["cpu_peak_rss_mb"] = measure.peak_rss_mb()
    results["wall_time_s"] = time.perf_counter() - t_start
    results["phase_times_s"] = phases.times
    report.write_report(results, out)
    return results


def _prepare_run(cfg: ProfileConfig) -> tuple[torch.device, Path]:
    """Validate the device and batch sizes, set the torch threads and create the output directory."""
    device = loading.check_device(cfg.device)
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise ValueError(f"--batch-sizes must be positive integers, got {cfg.batch_sizes}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return device, out


def _run_description(cfg: ProfileConfig, a: loading.LoadedModel, pool: dict[str, torch.Tensor], pool_desc: str,
                     plan: loading.InputPlan | None, device: torch.device, pbatch: int) -> dict[str, Any]:
    """The report's description of the run: config, model, environment and inputs."""
    names = a.input_names
    return {
        "config": {**asdict(cfg), "profile_batch": pbatch},
        "model": {
            "network_config": cfg.network_config,
            "model_class": type(a.model).__name__,
            "weights": a.weights,
            "params": loading.count_parameters(a.model),
            "trainable_params": int(sum(p.numel() for p in a.model.parameters() if p.requires_grad)),
            "input_names": names,
            "input_shapes": {k: list(pool[k].shape[1:]) for k in names},
        },
        "environment": {
            "torch": torch.__version__, "device": str(device), "threads": cfg.threads,
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "inputs": {"source": pool_desc, "multiplicity": loading.real_multiplicity(pool, loading.mask_input_name(names)),
                   "data_config_read": str(plan.data_config) if plan else None,
                   "notes": list(plan.notes) if plan else []},
    }


def _profile_ops_and_memory(model: torch.nn.Module, inputs: Sequence[torch.Tensor], device: torch.device,
                            out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """torch.profiler ops (trace.json in ``out``) and the memory figures (a CUDA snapshot on GPU)."""
    profiler = measure.profile_ops(model, inputs, device=device, trace_path=out / "trace.json")
    mem: dict[str, Any] = {"cpu_peak_rss_mb": measure.peak_rss_mb(),
                           "cpu_alloc_mb_per_forward": profiler["cpu_alloc_mb_per_step"]}
    if device.type == "cuda":
        mem["cuda"] = measure.cuda_memory(model, inputs, device=device, snapshot_path=out / "cuda_memory.pickle")
    return profiler, mem


def subnormal_summary(cfg: ProfileConfig, model: torch.nn.Module, inputs: Sequence[torch.Tensor],
                      device: torch.device, *, comparing: bool) -> dict[str, Any]:
    """Subnormal weights and activations; on CPU single-model runs also the flush-denormal timing, only when there
    is something to flush (or ``--ftz``); A/B runs measure it per side in ``compare_models``."""
    sub: dict[str, Any] = {"weights": measure.subnormal_weights(model),
                           "activations": measure.subnormal_activations(model, inputs)}
    n_sub = sub["weights"]["subnormal"] + sub["activations"]["subnormal"]
    if device.type == "cpu" and not comparing:
        sub["flush_denormal"] = measure.flush_denormal_effect(
            model, inputs, rounds=cfg.ftz_rounds, num_threads=cfg.threads) if (n_sub or cfg.always_ftz) else {
            "supported": None, "skipped": "no subnormal values in weights or activations (use --ftz to measure)"}
    return sub


def _parse_batch_sizes(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"--batch-sizes must be comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise ValueError(f"--batch-sizes must be positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The CLI (kept thin: everything maps onto ``ProfileConfig``)."""
    p = argparse.ArgumentParser(prog="python -m profiling.forward", description=__doc__.splitlines()[0])
    p.add_argument("--network-config", required=True)
    p.add_argument("--data-config", required=True)
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", help="state_dict to load (weights_only, strict)")
    w.add_argument("--random", action="store_true", help="keep the random initialisation (default)")
    p.add_argument("--compare-weights", help="B side of the A/B comparison (default with --weights: random init)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="1,64,512")
    p.add_argument("--profile-batch", type=int, default=None)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", nargs="+", help="ROOT or parquet file glob(s), preflighted with data.check, then read "
                     "with weaver's dataset (model inputs; labels and selection where the files have them)")
    src.add_argument("--synthetic", action="store_true", help="random-but-physical jets")
    p.add_argument("--multiplicity", default="20,80", help="synthetic particle multiplicity range LO,HI")
    p.add_argument("--multiplicities", default="16,32,64,128", help="particle counts for the latency sweep")
    p.add_argument("--out", default="profile_out")
    loading.add_network_option_argument(p)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per latency measurement")
    p.add_argument("--ab-rounds", type=int, default=8)
    p.add_argument("--ftz", action="store_true",
                   help="always time torch.set_flush_denormal(True) vs off (default: only when subnormals exist)")
    p.add_argument("--for-export", action="store_true",
                   help="build the model as weaver --export-onnx does (for_inference=True: no trimming, all slots) "
                        "instead of as weaver --predict does (default)")
    p.add_argument("--attention", action="store_true",
                   help="attention structure per layer and head (entropy, top-k mass, pair-bias share), trained "
                        "against random, and what DSA would save (ParT-like models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> ProfileConfig:
    """Validate CLI values and build a ``ProfileConfig``."""
    lo_hi = _parse_batch_sizes(args.multiplicity)
    if len(lo_hi) == 1:
        lo_hi = lo_hi * 2
    if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
        raise ValueError(f"--multiplicity must be LO,HI with LO <= HI, got {args.multiplicity!r}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    return ProfileConfig(
        network_config=args.network_config, data_config=args.data_config, weights=args.weights,
        compare_weights=args.compare_weights, device=args.device, batch_sizes=_parse_batch_sizes(args.batch_sizes),
        profile_batch=args.profile_batch, input_glob=args.input, synthetic=args.synthetic,
        synthetic_multiplicity=(lo_hi[0], lo_hi[1]), multiplicities=_parse_batch_sizes(args.multiplicities),
        out_dir=args.out, options=loading.parse_network_options(args.network_option), threads=args.threads,
        min_run_time=args.min_run_time, ab_rounds=args.ab_rounds, always_ftz=args.ftz,
        for_inference=args.for_export,
        seed=args.seed, quiet=args.quiet, attention=args.attention,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: one-line errors for bad input, a terminal summary on success."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        results = run_profile(cfg)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # bad input: the message says what and where
        print("\n".join(f"error: {line}" for line in str(exc).splitlines() or [type(exc).__name__]), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - anyone's network config can raise anything: one line, no traceback
        print(f"error: {args.network_config}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 2
    print(report.terminal_summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
