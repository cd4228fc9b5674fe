"""Roofline numbers for ``profiling.bench``: a batch's true FLOPs and this machine's dense-matmul peak.

- ``true_flops``: what a forward over the batch must compute when every jet costs its real multiplicity. Jets are
  grouped by exact multiplicity and each group is counted with ``profiling.flops.count_flops``, so no padded slot is
  counted. Matmul and elementwise FLOPs are both included.
- ``matmul_peak_gflops``: a square matmul (2048 x 2048 by default) timed on this machine in fp32, or in bf16 where
  the CPU has native bf16 (``native_bf16``: AMX or AVX512_BF16, read from /proc/cpuinfo's flags). On CPU the best of
  two kernels counts: ``torch.mm`` and oneDNN's linear with prepacked weights (what ``torch.compile`` with freezing
  runs). They differ by 2x on AMD Zen 5, where MKL's fp32 GEMM does not use the full-width AVX-512 units; a peak
  from ``torch.mm`` alone would let a compiled model appear to run at 98% of it.

A model that reaches a large fraction of the peak has little left to gain from kernels. Padding removal and
lower precision are what remain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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


def _matmul_kernels(a: torch.Tensor, b: torch.Tensor) -> list[Callable[[], torch.Tensor]]:
    """The dense matmuls of ``a @ b`` to time: ``torch.mm``, and on CPU oneDNN's prepacked linear where torch has it."""
    kernels = [lambda: torch.mm(a, b)]
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if a.device.type == "cpu" and torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise"):
        packed = mkldnn._reorder_linear_weight(b.T.contiguous(), None)  # linear weights are (out, in)
        kernels.append(lambda: mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    return kernels


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, *, size: int = 2048, repeats: int = 5,
                       device: torch.device | str = "cpu") -> float:
    """The best of ``repeats`` timed ``size`` x ``size`` matmuls over the kernels of ``_matmul_kernels``, in GFLOP/s
    (2 size^3 FLOPs each)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    cuda = torch.device(device).type == "cuda"
    best = float("inf")
    for kernel in _matmul_kernels(a, b):
        kernel()  # warm-up: allocation and kernel selection
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            kernel()
            if cuda:
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
