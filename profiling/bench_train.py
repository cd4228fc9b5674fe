"""Training benchmark: weaver-core 0.5.3's ParticleTransformer against ours, same initial weights, same batches.

``python -m profiling.bench --train [--batch-size 128] [--num-batches 4] [--repeats 3] [--threads 2]
[--training-path bucketed|padded] [--no-dropout] [--input 'DIR/*.root']``

A step is what ``weaver`` does per batch: forward in training mode, cross-entropy, backward, an AdamW step. Both
models start from the same weights and see the same batches with the same seed per step (so weaver's
SequenceTrimmer cuts both the same way); rounds alternate which model goes first. Prints jets/s of both, their
ratio, and the mean loss of each. With ``--no-dropout`` the two runs compute the same function, and their losses
agree step by step (printed). This is a benchmark script, not a test.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from profiling.bench import BenchInputs, cpu_kernels, paired_part, real_batches, speed_summary
from profiling.loading import check_device

__all__ = ["TrainBenchConfig", "format_train_result", "run_train_bench"]

NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0, "activation_dropout": 0.0}


@dataclass(frozen=True)
class TrainBenchConfig(BenchInputs):
    """Training steps: weaver-core's ParT against ours, same initial weights, batches and per-step seeds."""

    batch_size: int = 128
    repeats: int = 3
    device: str = "cpu"
    training_path: str = "bucketed"
    dropout: bool = True  # the published recipe's dropout 0.1; False: both models without dropout
    lr: float = 1e-3


def _models(cfg: TrainBenchConfig, input_dim: int, num_classes: int, device: torch.device):
    """weaver-core's ParT as ``weaver`` trains it and ours with the same weights, both in training mode."""
    torch.manual_seed(cfg.seed)
    options = {"training_path": cfg.training_path, "bucket_size": cfg.bucket_size,
               **({} if cfg.dropout else NO_DROPOUT)}
    reference, ours = paired_part(input_dim, num_classes, part_version=cfg.part_version, options=options,
                                  block_params=None if cfg.dropout else dict(NO_DROPOUT),
                                  where="profiling.bench --train")
    return reference.to(device).train(), ours.to(device).train()


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple, seed: int) -> float:
    torch.manual_seed(seed)
    x, v, mask, label = batch
    loss = F.cross_entropy(model(x, v, mask), label)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def run_train_bench(cfg: TrainBenchConfig) -> dict:
    """Alternate timed rounds of training steps of both models; return speeds, ratio and losses."""
    device = check_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    batches, input_dim, num_classes = real_batches(cfg.files, cfg.data_config, batch_size=cfg.batch_size,
                                                   num_batches=cfg.num_batches, seed=cfg.seed, device=device,
                                                   labels=True)
    reference, ours = _models(cfg, input_dim, num_classes, device)
    models = {"weaver": reference, "ours": ours}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=cfg.lr) for name, m in models.items()}
    losses: dict[str, list[float]] = {name: [] for name in models}
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():  # weaver's SequenceTrimmer starts trimming after 5 calls
        for i in range(6):
            _step(model, optimizers[name], batches[i % len(batches)], seed=10_000 + i)
    for r in range(cfg.repeats):
        for name in (("weaver", "ours") if r % 2 == 0 else ("ours", "weaver")):
            start = time.perf_counter()
            losses[name] += [_step(models[name], optimizers[name], b, seed=1000 * r + i) for i, b in enumerate(batches)]
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    result = speed_summary(cfg, device, [b[2] for b in batches], times)
    result |= {
        "weaver_mean_loss": statistics.fmean(losses["weaver"]),
        "ours_mean_loss": statistics.fmean(losses["ours"]),
        "max_rel_loss_diff": max(abs(a - b) / abs(a) for a, b in zip(losses["weaver"], losses["ours"], strict=True)),
    }
    return result


def format_train_result(r: dict) -> str:
    c = r["config"]
    loss_line = (f"max relative loss difference per step: {r['max_rel_loss_diff']:.2e} (no dropout: same function)"
                 if not c["dropout"] else
                 f"mean loss: weaver {r['weaver_mean_loss']:.4f}, ours {r['ours_mean_loss']:.4f} "
                 "(dropout draws different masks)")
    return "\n".join([
        f"device: {r['device']}{cpu_kernels(r)}, threads={c['threads']}, batch={c['batch_size']}, "
        f"{r['jets']} jets per round x {c['repeats']} rounds (multiplicity mean "
        f"{r['multiplicity_mean']:.1f}, max {r['multiplicity_max']:.0f})",
        f"training step (forward, cross-entropy, backward, AdamW), ParT version {c['part_version']:g}, "
        f"dropout {'0.1' if c['dropout'] else 'off'}",
        f"weaver-core ParT        : {r['weaver_jets_per_s']:8.1f} jets/s",
        f"weaver_ext {c['training_path']:9s}    : {r['ours_jets_per_s']:8.1f} jets/s   (bucket size "
        f"{c['bucket_size']})",
        f"ratio                   : {r['ratio']:8.2f}",
        loss_line,
    ])
