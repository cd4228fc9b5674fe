"""Dropout that draws only the dropped positions on CPU: the same distribution at a quarter of torch's cost.

On CPU, ``F.dropout`` draws one Bernoulli per element (``bernoulli_``, ~4.5 ns each on 2 threads) and was a
quarter of ParT's whole training step: attention weights, attention output and the MLP's hidden layer are dropped
in every block. Independent Bernoulli(p) drops are equivalently a sequence of gaps between drops, each gap
Geometric(p): ``1 + floor(ln U / ln(1 - p))`` with U uniform in (0, 1] (float64, so the inversion is exact to
2**-53). So only about p * n uniforms are drawn (a tenth of n for ParT's p = 0.1); their cumulative sum gives the
dropped positions. The output is ``x / (1 - p)`` with those positions zeroed, as ``F.dropout``; backward zeroes
the same positions. Only the random stream differs from ``F.dropout`` (a seeded run repeats exactly). On CUDA (whose
fused dropout is already cheap) and under ``torch.compile`` tracing, ``F.dropout`` runs unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "dropout", "drop_positions"]

Tensor = torch.Tensor


def drop_positions(numel: int, p: float, device: torch.device | str = "cpu") -> Tensor:
    """Sorted flat positions in [0, numel), each included independently with probability p (torch's generator)."""
    log_keep = math.log1p(-p)
    mean = numel * p
    chunk = int(mean + 6.0 * math.sqrt(mean * (1.0 - p)) + 16)  # enough gaps to pass numel almost always
    parts, last = [], -1
    while True:
        uniform = 1.0 - torch.rand(chunk, dtype=torch.float64, device=device)  # (0, 1]: ln U is finite
        gaps = torch.floor(torch.log(uniform) / log_keep).long().add_(1)  # Geometric(p) on {1, 2, ...}
        positions = torch.cumsum(gaps, 0).add_(last)
        parts.append(positions)
        if int(positions[-1]) >= numel:
            break
        last = int(positions[-1])
    positions = parts[0] if len(parts) == 1 else torch.cat(parts)
    return positions[: int(torch.searchsorted(positions, numel))]


class _DropPositions(torch.autograd.Function):
    """x / (1 - p) with the drawn positions zeroed; saves only the positions (about p * n integers)."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        out = x.mul(1.0 / (1.0 - p)).contiguous()
        positions = drop_positions(out.numel(), p, out.device)
        out.view(-1).index_fill_(0, positions, 0.0)
        ctx.save_for_backward(positions)
        ctx.scale = 1.0 / (1.0 - p)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (positions,) = ctx.saved_tensors
        grad_in = grad.mul(ctx.scale).contiguous()
        grad_in.view(-1).index_fill_(0, positions, 0.0)
        return grad_in, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``, cheaper on CPU (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not 0.0 < p < 1.0:
        return F.dropout(x, p=p, training=True)
    return _DropPositions.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same name in state_dicts and reprs) through ``dropout``."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
