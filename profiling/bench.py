"""Benchmark: weaver-core 0.5.3's ParticleTransformer vs our fast inference path, same weights, same jets.

``python -m profiling.bench [--train] [--part-version 3] [--input 'DIR/*.root'] [--data-config ...] [--batch-size 256]
[--threads 2] [--dtype fp32|bf16] [--compile] [--device cpu|cuda] [--weights STATE.pt]``

Both models see the same batches of real generated jets (weaver's own preprocessing), in alternating timed passes.
Prints jets/s of both, the ratio, the max |difference| of the softmax outputs and the argmax agreement. This is a
benchmark script, not a test: the numbers depend on the machine and its load.

``--train`` benchmarks training steps instead (``profiling/bench_train.py``), ``--onnx`` onnxruntime on both models'
exports (``profiling/bench_onnx.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer as WeaverParT

from profiling.loading import check_device, expand_input_files, load_real_jets
from profiling.roofline import matmul_peak_gflops, native_bf16, true_flops
from weaver_ext.checkpoint import check_state_dict, read_state_dict
from weaver_ext.config import from_options
from weaver_ext.fast_inference import FastInferenceConfig, FastParT
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import ParTConfig, version_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchInputs:
    """What every benchmark here shares: the jets, the batches, the timing schedule and the ParT version."""

    files: tuple[str, ...]
    data_config: str
    batch_size: int = 256
    num_batches: int = 4
    repeats: int = 5
    threads: int = 2
    bucket_size: int = 32
    seed: int = 0
    part_version: float = 1  # weaver-core's ParticleTransformer(version=...), ours with -o part_version


@dataclass(frozen=True)
class BenchConfig(BenchInputs):
    """Inference: weaver-core's eager ParT against our fast path."""

    device: str = "cpu"
    dtype: str = "fp32"
    weights: str | None = None
    compile: bool = False  # our fast path through torch.compile (frozen weights); compile time reported apart


def bench_inputs(args: argparse.Namespace, files: Sequence[str], *, default_batch: int) -> dict:
    """The ``BenchInputs`` fields from the command line (shared by the inference, ONNX and training benchmarks)."""
    return {"files": tuple(files), "data_config": args.data_config, "batch_size": args.batch_size or default_batch,
            "num_batches": args.num_batches, "repeats": args.repeats, "threads": args.threads,
            "bucket_size": args.bucket_size, "part_version": args.part_version}


def paired_part(input_dim: int, num_classes: int, *, part_version: float, options: dict | None = None,
                block_params: dict | None = None, weights: str | None = None, where: str = "profiling.bench",
                for_inference: bool = False):
    """weaver-core's ParT, built as the published recipe builds it (example_ParticleTransformer.py, which our
    defaults reproduce), and our ParT with its weights: (reference, ours). ``options`` are our ``-o`` options,
    ``block_params`` weaver-core's; ``weights`` a weaver-core state_dict (a 'mod.' prefix is removed);
    ``for_inference`` builds both as ``weaver --export-onnx`` does (softmax output, no trimmer)."""
    options = {"part_version": part_version, "for_inference": for_inference, **(options or {})}
    ours_cfg = from_options(ParTConfig, options, where=where, input_dim=input_dim, num_classes=num_classes,
                            defaults=version_defaults(options, None, where="--part-version"))
    reference = WeaverParT(input_dim=input_dim, num_classes=num_classes, fc_params=[], version=part_version,
                           use_pre_activation_pair=ours_cfg.embedding.use_pre_activation_pair,
                           block_params=block_params, for_inference=for_inference)
    if weights:
        state = {k.removeprefix("mod."): v for k, v in read_state_dict(weights).items()}
        check_state_dict(reference, state, source=weights)
        reference.load_state_dict(state)
    ours = ParticleTransformer(ours_cfg)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def real_batches(files, data_config: str, *, batch_size: int, num_batches: int, seed: int, device: torch.device,
                 labels: bool = False) -> tuple[list[tuple], int, int]:
    """Full batches of real jets in a seeded random order (classes mixed): (batches of (x, v, mask[, label]),
    input_dim, num_classes)."""
    jets = load_real_jets(files, data_config, max_jets=batch_size * num_batches)
    n_jets = len(jets.labels)
    order = torch.randperm(n_jets, generator=torch.Generator().manual_seed(seed))
    names = ("pf_features", "pf_vectors", "pf_mask")
    label_tensor = torch.as_tensor(jets.labels)
    batches = [tuple(jets.inputs[k][idx].to(device) for k in names) + ((label_tensor[idx].to(device),) if labels
                                                                      else ())
               for idx in order.split(batch_size) if len(idx) == batch_size]
    if not batches:
        raise ValueError(f"need at least {batch_size} jets, the input has {n_jets}")
    return batches, jets.inputs["pf_features"].shape[1], len(jets.label_names)


def _models(cfg: BenchConfig, input_dim: int, num_classes: int, device: torch.device):
    """weaver-core's ParT (as ``weaver --predict`` runs it: eval, trimming) and our fast path, same weights."""
    torch.manual_seed(cfg.seed)
    reference, ours = paired_part(input_dim, num_classes, part_version=cfg.part_version, weights=cfg.weights)
    fast = FastParT(ours.to(device).eval(), FastInferenceConfig(bucket_size=cfg.bucket_size, dtype=cfg.dtype,
                                                                compile=cfg.compile))
    return reference.to(device).eval(), fast


def _timed(fn, batches) -> tuple[float, list[torch.Tensor]]:
    outputs = []
    start = time.perf_counter()
    for batch in batches:
        outputs.append(fn(*batch))
    if batches[0][0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, outputs


def run_bench(cfg: BenchConfig) -> dict:
    """Alternate timed passes of both models over the same batches; return speeds, ratio and output agreement."""
    device = check_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    batches, input_dim, num_classes = real_batches(cfg.files, cfg.data_config, batch_size=cfg.batch_size,
                                                   num_batches=cfg.num_batches, seed=cfg.seed, device=device)
    reference, fast = _models(cfg, input_dim, num_classes, device)

    def run_reference(x, v, m):
        return torch.softmax(reference(x, v, m).float(), dim=1)

    def run_fast(x, v, m):
        return torch.softmax(fast(x, v, m), dim=1)

    with torch.inference_mode():
        for _ in range(6):  # weaver's SequenceTrimmer only trims after 5 calls
            run_reference(*batches[0])
        warmup, _ = _timed(run_fast, batches)  # every batch: compiling may specialise on some group sizes
        ref_times, fast_times = [], []
        for _ in range(cfg.repeats):
            t_ref, ref_out = _timed(run_reference, batches)
            t_fast, fast_out = _timed(run_fast, batches)
            ref_times.append(t_ref)
            fast_times.append(t_fast)
    ref_out, fast_out = torch.cat(ref_out), torch.cat(fast_out)
    result = speed_summary(cfg, device, [b[2] for b in batches], {"weaver": ref_times, "ours": fast_times})
    result |= {
        "warmup_s": warmup,
        "max_abs_diff_softmax": float((fast_out - ref_out).abs().max()),
        "argmax_agreement": float((fast_out.argmax(1) == ref_out.argmax(1)).float().mean()),
        "mean_max_softmax": float(ref_out.max(1).values.mean()),
    }
    result.update(_roofline(cfg, reference, batches, result, device))
    return result


def speed_summary(cfg: BenchInputs, device: torch.device, masks: Sequence, times: dict[str, list[float]]) -> dict:
    """The part of every benchmark's result they share: config, machine, the jets' multiplicities, jets/s of both
    models (medians of the timed passes over ``masks``' batches) and their ratio. ``masks``: (B, 1, L) per batch,
    tensors or numpy arrays."""
    lengths = [float(length) for mask in masks for length in mask.sum(axis=(1, 2))]
    n = len(lengths)
    speeds = {f"{name}_jets_per_s": n / statistics.median(values) for name, values in times.items()}
    return {
        "config": asdict(cfg),
        "device": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "jets": n,
        "multiplicity_mean": statistics.fmean(lengths),
        "multiplicity_max": max(lengths),
        **speeds,
        **{f"{name}_times_s": values for name, values in times.items()},
        "ratio": speeds["ours_jets_per_s"] / speeds["weaver_jets_per_s"],
    }


def _report(result: dict, text: str, out: str | None) -> int:
    """Print a benchmark's report; write its result as JSON to ``out`` when given."""
    print(text)
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return 0


def _roofline(cfg: BenchConfig, reference: torch.nn.Module, batches: list, result: dict,
              device: torch.device) -> dict:
    """True FLOPs of a pass (real multiplicities), the GFLOP/s of both models and this machine's matmul peaks."""
    flops = true_flops(reference, batches)
    bf16 = native_bf16() if device.type == "cpu" else "cuda"
    peak_fp32 = matmul_peak_gflops(torch.float32, device=device)
    peak_bf16 = matmul_peak_gflops(torch.bfloat16, device=device) if bf16 else None
    per_pass = {name: flops / (cfg.batch_size * len(batches) / result[f"{name}_jets_per_s"]) / 1e9
                for name in ("weaver", "ours")}
    ours_peak = peak_bf16 if cfg.dtype == "bf16" and peak_bf16 else peak_fp32
    return {"true_gflop_per_pass": flops / 1e9, "weaver_gflops": per_pass["weaver"], "ours_gflops": per_pass["ours"],
            "peak_fp32_gflops": peak_fp32, "peak_bf16_gflops": peak_bf16, "native_bf16": bf16,
            "weaver_fraction_of_fp32_peak": per_pass["weaver"] / peak_fp32,
            "ours_fraction_of_peak": per_pass["ours"] / ours_peak}


def cpu_kernels(result: dict) -> str:
    """' (AVX512)': the CPU kernel level torch picked, shown for CPU runs only (a GPU run's host CPU is irrelevant)."""
    return f" ({result['cpu_capability']})" if result["config"]["device"] == "cpu" else ""


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def format_result(r: dict) -> str:
    c = r["config"]
    return "\n".join([
        f"device: {r['device']}{cpu_kernels(r)}, threads={c['threads']}, batch={c['batch_size']}, "
        f"dtype={c['dtype']}, jets={r['jets']} (multiplicity mean {r['multiplicity_mean']:.1f}, "
        f"max {r['multiplicity_max']:.0f})",
        f"weaver-core ParT fp32 : {r['weaver_jets_per_s']:8.1f} jets/s   (version {c['part_version']:g} for both)",
        f"weaver_ext fast {c['dtype']:5s}: {r['ours_jets_per_s']:8.1f} jets/s"
        + (f"   (torch.compile, frozen weights; first pass incl. compiling {r['warmup_s']:.0f} s)" if c["compile"]
           else ""),
        f"ratio                 : {r['ratio']:8.2f}",
        f"max |d softmax|       : {r['max_abs_diff_softmax']:.2e}   argmax agreement: {r['argmax_agreement']:.4f}"
        f"   (mean max-softmax of the reference {r['mean_max_softmax']:.3f})",
        f"roofline              : {r['true_gflop_per_pass']:.2f} GFLOP per pass at the jets' real multiplicities; "
        f"weaver-core {r['weaver_gflops']:.1f} GFLOP/s ({100 * r['weaver_fraction_of_fp32_peak']:.0f}% of fp32 "
        f"peak), ours {r['ours_gflops']:.1f} GFLOP/s ({100 * r['ours_fraction_of_peak']:.0f}% of {c['dtype']} peak)",
        f"matmul peak           : fp32 {r['peak_fp32_gflops']:.0f} GFLOP/s; bf16 "
        + (f"{r['peak_bf16_gflops']:.0f} GFLOP/s (native: {r['native_bf16']})" if r["peak_bf16_gflops"]
           else "not native on this CPU (no AMX, no AVX512_BF16): not measured"),
    ])


def _default_files(seed: int) -> list[str]:
    """A fresh sample of generated jets (all ten classes) when no --input is given."""
    from data.generate import generate_dataset

    out = Path(tempfile.mkdtemp(prefix="weaverlab_bench_"))
    files = generate_dataset(classes="all", jets_per_class=110, out_dir=out, seed=seed, workers=2)
    return [str(f) for f in files]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="*", help="ROOT file globs; default: generate 1100 jets now")
    p.add_argument("--data-config", default=str(REPO_ROOT / "data/JetClass/JetClass_full.yaml"))
    p.add_argument("--batch-size", type=int, help="default 256 (inference), 128 (--train)")
    p.add_argument("--num-batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--bucket-size", type=int, default=32)
    p.add_argument("--compile", action="store_true",
                   help="our fast path through torch.compile with frozen weights (inductor; ~30 s per graph)")
    p.add_argument("--weights", help="state_dict of weaver-core's ParticleTransformer (a 'mod.' prefix is removed)")
    p.add_argument("--part-version", type=float, default=1.0, choices=[1.0, 2.0, 3.0, 3.5, 3.6],
                   help="weaver-core ParT version, ours built with the same -o part_version")
    p.add_argument("--out", help="write the result as JSON here")
    onnx = p.add_argument_group("ONNX (--onnx)")
    onnx.add_argument("--onnx", action="store_true",
                      help="onnxruntime: our fast-path export against weaver-core's export (profiling/bench_onnx.py)")
    onnx.add_argument("--latency-jets", type=int, default=256, help="jets timed one at a time for the batch-1 latency")
    train = p.add_argument_group("training (--train)")
    train.add_argument("--train", action="store_true", help="benchmark training steps (default batch 128)")
    train.add_argument("--training-path", default="bucketed", choices=["bucketed", "padded"])
    train.add_argument("--no-dropout", action="store_true", help="both models without dropout (same function)")
    args = p.parse_args(argv)
    files = expand_input_files(args.input) if args.input else _default_files(seed=11)
    if args.train:
        return _main_train(args, files)
    if args.onnx:
        return _main_onnx(args, files)
    cfg = BenchConfig(**bench_inputs(args, files, default_batch=256), device=args.device, dtype=args.dtype,
                      weights=args.weights, compile=args.compile)
    result = run_bench(cfg)
    return _report(result, format_result(result), args.out)


def _main_onnx(args: argparse.Namespace, files: list[str]) -> int:
    from profiling.bench_onnx import OnnxBenchConfig, format_onnx_result, run_onnx_bench

    if args.device != "cpu" or args.dtype != "fp32":
        raise SystemExit("profiling.bench: --onnx runs onnxruntime's CPU provider in fp32 (no --device/--dtype)")
    cfg = OnnxBenchConfig(**bench_inputs(args, files, default_batch=256), latency_jets=args.latency_jets,
                          weights=args.weights)
    result = run_onnx_bench(cfg)
    return _report(result, format_onnx_result(result), args.out)


def _main_train(args: argparse.Namespace, files: list[str]) -> int:
    from profiling.bench_train import TrainBenchConfig, format_train_result, run_train_bench

    cfg = TrainBenchConfig(**bench_inputs(args, files, default_batch=128), device=args.device,
                           training_path=args.training_path, dropout=not args.no_dropout)
    result = run_train_bench(cfg)
    return _report(result, format_train_result(result), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
