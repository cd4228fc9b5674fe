"""Roofline numbers for ``profiling.bench``: a batch's true FLOPs and this machine's dense-matmul peak.

- ``true_flops``: what a forward over the batch must compute when every jet costs its real multiplicity. Jets are
  grouped by exact multiplicity and each group is counted with ``profiling.flops.count_flops``, so no padded slot is
  counted. Matmul and elementwise FLOPs are both included.
- ``matmul_peak_gflops``: a square matmul (2048 x 2048 by default) timed on this machine in fp32, or in bf16 where
  the CPU has native bf16 (``native_bf16``: AMX or AVX512_BF16, read from /proc/cpuinfo's flags).

A model that reaches a large fraction of the peak has little left to gain from kernels. Padding removal and
lower precision are what remain.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from profiling.flops import count_flops

__all__ = ["cpu_flags", "matmul_peak_gflops", "native_bf16", "true_flops"]


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None) -> str | None:
    """'AMX' or 'AVX512_BF16' when the CPU computes bf16 natively, else None (bf16 is then emulated and slow)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512_BF16"
    return None


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, *, size: int = 2048, repeats: int = 5,
                       device: torch.device | str = "cpu") -> float:
    """The best of ``repeats`` timed ``size`` x ``size`` matmuls, in GFLOP/s (2 size^3 FLOPs each)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up: allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def true_flops(model: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]]) -> int:
    """FLOPs of one forward over all ``batches`` (x, v, mask, ...) at the jets' real multiplicities."""
    x = torch.cat([b[0] for b in batches])
    v = torch.cat([b[1] for b in batches])
    mask = torch.cat([b[2] for b in batches]).bool()
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)  # real particles first
    x, v, mask = (t.gather(-1, order.expand_as(t)) for t in (x, v, mask))
    lengths = mask.sum(dim=(1, 2))
    total = 0
    was_training = model.training
    model.eval()
    try:
        for length in torch.unique(lengths).tolist():
            idx = (lengths == length).nonzero().squeeze(1)
            keep = max(int(length), 1)
            report = count_flops(model, (x[idx, :, :keep], v[idx, :, :keep], mask[idx, :, :keep].float()))
            total += report.matmul_flops + report.other_flops
    finally:
        model.train(was_training)
    return total
