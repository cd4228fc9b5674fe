"""Transformer blocks of ParT: a particle (self-attention) block and a class-attention block, one class.

Parameter names follow weaver-core's ``Block`` so its ParT checkpoints load unchanged. Optional refinements are
small modules switched on by ``BlockConfig``; a variant never copies this block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .attention import MultiheadAttention, ValueResidual

Tensor = torch.Tensor


@dataclass(frozen=True)
class BlockConfig:
    """Options of one block; defaults are ParT version 1 (the paper configuration)."""

    embed_dim: int = 128
    num_heads: int = 8
    ffn_ratio: int = 4
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.1
    activation: Literal["gelu", "relu", "swiglu"] = "gelu"
    scale_attn: bool = True  # post-attention LayerNorm
    scale_fc: bool = True  # LayerNorm inside the FFN
    scale_heads: bool = True  # learned per-head output scale
    scale_resids: bool = True  # learned residual scale
    layer_scale_init: float | None = None  # LayerScale (CaiT) initial value; None = off
    attn_backend: str = "sdpa"


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT); ``gamma`` matches weaver's name."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: attention with pair bias, then an MLP, each with a scaled residual."""

    def __init__(self, cfg: BlockConfig, *, attention: MultiheadAttention | None = None) -> None:
        super().__init__()
        dim, ffn_dim = cfg.embed_dim, cfg.embed_dim * cfg.ffn_ratio
        self.num_heads = cfg.num_heads
        self.head_dim = dim // cfg.num_heads
        self.pre_attn_norm = nn.LayerNorm(dim)
        self.attn = attention or MultiheadAttention(
            dim, cfg.num_heads, dropout=cfg.attn_dropout, backend=cfg.attn_backend
        )
        self.post_attn_norm = nn.LayerNorm(dim) if cfg.scale_attn else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre_fc_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc1_g = nn.Linear(dim, ffn_dim) if cfg.activation == "swiglu" else None
        self.act = {"gelu": nn.GELU, "relu": nn.ReLU, "swiglu": nn.SiLU}[cfg.activation]()
        self.act_dropout = nn.Dropout(cfg.activation_dropout)
        self.post_fc_norm = nn.LayerNorm(ffn_dim) if cfg.scale_fc else nn.Identity()
        self.fc2 = nn.Linear(ffn_dim, dim)
        if cfg.layer_scale_init is not None:
            self.ls1, self.ls2 = LayerScale(dim, cfg.layer_scale_init), LayerScale(dim, cfg.layer_scale_init)
        else:
            self.ls1, self.ls2 = nn.Identity(), nn.Identity()
        self.c_attn = nn.Parameter(torch.ones(cfg.num_heads)) if cfg.scale_heads else None
        self.w_resid = nn.Parameter(torch.ones(dim)) if cfg.scale_resids else None

    def _attention(self, x: Tensor, x_cls: Tensor | None, padding_mask: Tensor | None, bias: Tensor | None,
                   value_residual: ValueResidual | None = None) -> Tensor:
        if x_cls is None:
            return self.attn(self.pre_attn_norm(x), bias=bias, key_padding_mask=padding_mask,
                             value_residual=value_residual)
        # class attention (CaiT): the class token(s) query themselves and all particles
        if padding_mask is not None:
            token_mask = torch.zeros_like(padding_mask[:, :1]).expand(-1, x_cls.size(1))
            padding_mask = torch.cat((token_mask, padding_mask), dim=1)
        u = self.pre_attn_norm(torch.cat((x_cls, x), dim=1))
        return self.attn(x_cls, u, key_padding_mask=padding_mask)

    def _mlp(self, x: Tensor) -> Tensor:
        x = self.pre_fc_norm(x)
        h = self.fc1(x)
        h = self.act(h) if self.fc1_g is None else self.act(self.fc1_g(x)) * h
        h = self.post_fc_norm(self.act_dropout(h))
        return self.dropout(self.fc2(h))

    def forward(
        self,
        x: Tensor,
        *,
        x_cls: Tensor | None = None,
        padding_mask: Tensor | None = None,
        bias: Tensor | None = None,
        value_residual: ValueResidual | None = None,
    ) -> Tensor:
        """x: (B, L, E) particles; x_cls: (B, T, E) class/query tokens for a cross-attention block (then returns the
        updated tokens).

        padding_mask: bool (B, L), True for padded particles; bias: additive (B, H, L, L) pair interaction;
        value_residual: shared value-residual state of the particle blocks (None = off).
        """
        residual = x if x_cls is None else x_cls
        h = self._attention(x, x_cls, padding_mask, bias, value_residual)
        if self.c_attn is not None:
            h = (h.unflatten(-1, (self.num_heads, self.head_dim)) * self.c_attn[:, None]).flatten(-2)
        h = self.ls1(self.dropout(self.post_attn_norm(h)))
        x = h + residual

        residual = x if self.w_resid is None else x * self.w_resid
        return self.ls2(self._mlp(x)) + residual
