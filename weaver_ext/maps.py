"""Attention maps: how a core turns per-head q, k into weights over the keys it attends to.

A core hands its maps an ``attend(q, k, first)`` function that runs one softmax map over the core's keys (all keys
through a backend, or the keys a DSA selection kept) and returns ``weights @ v``. ``softmax`` maps call it once
(ParT); ``differential`` maps (DIFF Transformer, arXiv:2410.05258) split q and k per head into halves, call it
twice and subtract:

    out = RMSNorm( attend(q1, k1) - lambda attend(q2, k2) ) * (1 - lambda_init)
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,   lambda_init = 0.8 - 0.6 exp(-0.3 depth)

so differential attention combines with any selection, and DSA with differential maps is a configuration.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MAPS", "AttendFn", "DifferentialMaps", "HeadRMSNorm", "SoftmaxMaps", "lambda_init_schedule", "make_maps"]

Tensor = torch.Tensor
AttendFn = Callable[[Tensor, Tensor, bool], Tensor]  # (q part, k part, first map?) -> (B, H, Lq, D)


def lambda_init_schedule(depth: int) -> float:
    """The paper's initial lambda for the block at 0-based ``depth``: 0.8 - 0.6 exp(-0.3 depth)."""
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


class HeadRMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned weight, written out so the TorchScript ONNX exporter handles it
    (``nn.RMSNorm`` exports as ``aten::rms_norm``, which opset 15 lacks)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


class SoftmaxMaps(nn.Module):
    """One softmax map over the keys: ParT's attention."""

    num_maps = 1
    qk_fraction = 1.0  # share of the head dimension each map's q.k uses

    def forward(self, q: Tensor, k: Tensor, attend: AttendFn) -> Tensor:
        return attend(q, k, True)


class DifferentialMaps(nn.Module):
    """Two softmax maps from the two q/k halves, subtracted with a learned lambda, normalised per head."""

    num_maps = 2
    qk_fraction = 0.5

    def __init__(self, head_dim: int, *, depth: int, lambda_init: float | None = None) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"differential attention needs an even head_dim, got {head_dim}")
        half = head_dim // 2
        self.lambda_init = lambda_init_schedule(depth) if lambda_init is None else float(lambda_init)
        self.lambda_q1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(half) * 0.1)
        self.subln = HeadRMSNorm(head_dim)

    def lambda_value(self) -> Tensor:
        """The re-parameterised lambda (a scalar shared by the heads of this layer)."""
        return (torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
                - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2)) + self.lambda_init)

    def forward(self, q: Tensor, k: Tensor, attend: AttendFn) -> Tensor:
        q1, q2 = q.chunk(2, dim=-1)
        k1, k2 = k.chunk(2, dim=-1)
        first, second = attend(q1, k1, True), attend(q2, k2, False)
        out = first - self.lambda_value().to(first.dtype) * second
        return self.subln(out) * (1.0 - self.lambda_init)


MAPS = ("softmax", "differential")


def make_maps(name: str, *, head_dim: int, depth: int, lambda_init: float | None = None) -> nn.Module:
    """The maps module by name ('softmax' or 'differential')."""
    if name == "softmax":
        return SoftmaxMaps()
    if name == "differential":
        return DifferentialMaps(head_dim, depth=depth, lambda_init=lambda_init)
    raise ValueError(f"unknown attention maps {name!r}; valid: {', '.join(MAPS)}")
