"""Transformer blocks of ParT: a particle (self-attention) block and a class-attention block, one class.

Parameter names follow weaver-core's ``Block`` so its ParT checkpoints load unchanged. Optional refinements
(LayerScale, SwiGLU) are switched on by the block options; an attention variant is a core of ``attention_kinds``,
never a copied block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from weaver.nn.model.ParticleTransformer import DropPath

from .attention import MultiheadAttention
from .context import ForwardContext
from .dropout import Dropout
from .norms import make_norm
from .part_config import BlocksConfig

__all__ = ["Block", "BlockConfig", "LayerScale", "attention_options"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class BlockConfig:
    """One block: the model's block options (``part_config.BlocksConfig``), its width, and the backend of its
    default softmax attention."""

    options: BlocksConfig = field(default_factory=BlocksConfig)
    embed_dim: int = 128
    attn_backend: str = "sdpa"


def attention_options(options: BlocksConfig) -> dict:
    """The ``MultiheadAttention`` arguments the block options set (biases, QK-norm, output gate, norm type)."""
    return {"bias": options.bias, "qk_norm": options.qk_norm, "gate": options.attn_gate, "norm": options.norm}


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
        """``attention`` replaces the default softmax attention (a model passes the one its attention kind built)."""
        super().__init__()
        opts = cfg.options
        dim, ffn_dim = cfg.embed_dim, cfg.embed_dim * opts.ffn_ratio
        self.num_heads = opts.num_heads
        self.head_dim = dim // opts.num_heads
        scales = opts.block_scales
        self.pre_attn_norm = make_norm(opts.norm, dim)
        self.attn = attention or MultiheadAttention(dim, opts.num_heads, dropout=opts.attn_dropout,
                                                    backend=cfg.attn_backend, **attention_options(opts))
        self.post_attn_norm = make_norm(opts.norm, dim) if scales else nn.Identity()
        self.dropout = Dropout(opts.dropout)
        self.pre_fc_norm = make_norm(opts.norm, dim)
        self.fc1 = nn.Linear(dim, ffn_dim, bias=opts.bias)
        self.fc1_g = nn.Linear(dim, ffn_dim, bias=opts.bias) if opts.ffn_activation == "swiglu" else None
        self.act = {"gelu": nn.GELU, "relu": nn.ReLU, "swiglu": nn.SiLU}[opts.ffn_activation]()
        self.act_dropout = Dropout(opts.activation_dropout)
        self.post_fc_norm = make_norm(opts.norm, ffn_dim) if scales else nn.Identity()
        self.fc2 = nn.Linear(ffn_dim, dim, bias=opts.bias)
        if opts.layer_scale_init is not None:
            self.ls1, self.ls2 = LayerScale(dim, opts.layer_scale_init), LayerScale(dim, opts.layer_scale_init)
        else:
            self.ls1, self.ls2 = nn.Identity(), nn.Identity()
        self.drop_path1 = DropPath(opts.drop_path) if opts.drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(opts.drop_path) if opts.drop_path > 0 else nn.Identity()
        self.c_attn = nn.Parameter(torch.ones(opts.num_heads)) if scales else None
        self.w_resid = nn.Parameter(torch.ones(dim)) if scales else None

    def _attention(self, x: Tensor, x_cls: Tensor | None, padding_mask: Tensor | None, bias: Tensor | None,
                   ctx: ForwardContext | None) -> Tensor:
        if x_cls is None:
            return self.attn(self.pre_attn_norm(x), bias=bias, key_padding_mask=padding_mask, ctx=ctx)
        # class attention (CaiT): the class token(s) query themselves and all particles
        if padding_mask is not None:
            token_mask = torch.zeros_like(padding_mask[:, :1]).expand(-1, x_cls.size(1))
            padding_mask = torch.cat((token_mask, padding_mask), dim=1)
        u = self.pre_attn_norm(torch.cat((x_cls, x), dim=1))
        # ParT gives class attention no pair bias (None); the packed layout passes its groups (backends.ClassGroups)
        return self.attn(x_cls, u, bias=bias, key_padding_mask=padding_mask, ctx=ctx)

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
        ctx: ForwardContext | None = None,
    ) -> Tensor:
        """x: (B, L, E) particles; x_cls: (B, T, E) class/query tokens for a cross-attention block (then returns the
        updated tokens).

        padding_mask: bool (B, L), True for padded particles; bias: additive (B, H, L, L) pair interaction;
        ctx: this forward's context (value residual, DSA schedule and records), a default one when None.
        """
        residual = x if x_cls is None else x_cls
        h = self._attention(x, x_cls, padding_mask, bias, ctx)
        if self.c_attn is not None:
            h = (h.unflatten(-1, (self.num_heads, self.head_dim)) * self.c_attn[:, None]).flatten(-2)
        h = self.drop_path1(self.ls1(self.dropout(self.post_attn_norm(h))))
        x = h + residual

        residual = x if self.w_resid is None else x * self.w_resid
        return self.drop_path2(self.ls2(self._mlp(x))) + residual
