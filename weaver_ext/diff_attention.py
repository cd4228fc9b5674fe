"""Differential attention (DIFF Transformer, arXiv:2410.05258) as a ``MultiheadAttention`` subclass, and a ParT
built with it.

Per head, the query and key (head_dim D) are split into two halves (q1, q2), (k1, k2) of D/2; the value keeps D:

    out = RMSNorm( softmax(q1 k1^T / sqrt(D/2) + B) V - lambda softmax(q2 k2^T / sqrt(D/2) + B) V ) * (1 - lambda_init)
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,   lambda_init = 0.8 - 0.6 exp(-0.3 depth)

B is ParT's pair bias plus the padding mask, added to both score maps. Each softmax map is computed by the
selected attention backend (``attend`` of the parent class), so every backend that supports the bias works here.
Parameter count: the base projections plus 4 * D/2 lambda vectors and a D-wide RMSNorm weight per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .attention import MultiheadAttention
from .part import ParTConfig, ParticleTransformer

Tensor = torch.Tensor


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


class DiffMultiheadAttention(MultiheadAttention):
    """Multi-head differential attention; same projections (and parameter names) as ``MultiheadAttention``."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        depth: int,
        dropout: float = 0.0,
        bias: bool = True,
        backend: str = "sdpa",
        lambda_init: float | None = None,
    ) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, backend=backend)
        if self.head_dim % 2:
            raise ValueError(f"differential attention needs an even head_dim, got {self.head_dim}")
        half = self.head_dim // 2
        self.lambda_init = lambda_init_schedule(depth) if lambda_init is None else float(lambda_init)
        self.lambda_q1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(half) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(half) * 0.1)
        self.subln = HeadRMSNorm(self.head_dim)

    def lambda_value(self) -> Tensor:
        """The re-parameterised lambda (a scalar shared by the heads of this layer)."""
        return (
            torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
            - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2))
            + self.lambda_init
        )

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None, key_padding_mask: Tensor | None
    ) -> Tensor:
        """Two attention maps from the two q/k halves, subtracted, normalised per head and rescaled."""
        q1, q2 = q.chunk(2, dim=-1)
        k1, k2 = k.chunk(2, dim=-1)
        first = super().attend(q1, k1, v, bias=bias, key_padding_mask=key_padding_mask)
        second = super().attend(q2, k2, v, bias=bias, key_padding_mask=key_padding_mask)
        out = first - self.lambda_value().to(first.dtype) * second
        return self.subln(out) * (1.0 - self.lambda_init)


@dataclass(frozen=True)
class DiffParTConfig(ParTConfig):
    """ParT options plus differential attention's: a fixed lambda_init (None = the depth schedule)."""

    diff_lambda_init: float | None = None
    diff_cls_blocks: bool = False  # also use differential attention in the class-attention blocks


class DiffParticleTransformer(ParticleTransformer):
    """ParT whose particle blocks (and optionally class blocks) use differential attention."""

    cfg: DiffParTConfig

    def make_attention(self, index: int, *, cls_block: bool = False) -> MultiheadAttention | None:
        cfg = self.cfg
        if cls_block and not cfg.diff_cls_blocks:
            return None
        block_cfg = cfg.block_config(cls_block=cls_block)
        depth = index + (cfg.num_layers if cls_block else 0)
        return DiffMultiheadAttention(block_cfg.embed_dim, block_cfg.num_heads, depth=depth,
                                      dropout=block_cfg.attn_dropout, backend=block_cfg.attn_backend,
                                      lambda_init=cfg.diff_lambda_init)
