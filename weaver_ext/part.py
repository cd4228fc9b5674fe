"""Particle Transformer (ParT, arXiv:2202.03772) with pluggable attention, built from weaver-core's pieces.

Particle embedding, pair (interaction) embedding, sequence trimmer and weight initialisation are weaver-core's own;
the blocks are ours (``blocks.py``) so the attention core can be swapped. Module and parameter names match
weaver-core's ``ParticleTransformer`` so a state_dict of it loads unchanged and gives the same outputs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from weaver.nn.model.ParticleTransformer import (
    Embed,
    PairEmbed,
    SequenceTrimmer,
    build_sparse_tensor,
    init_weights_vit_moco,
    init_weights_vit_timm,
    named_apply,
)

from .blocks import Block, BlockConfig

Tensor = torch.Tensor

_PAIR_INPUT_DIMS = {"pp": 4, "ee": 6, "xyzt": 7}


@dataclass(frozen=True)
class ParTConfig:
    """All ParT options; defaults are the published configuration (weaver-core ``version=1``)."""

    input_dim: int
    num_classes: int | None
    # embeddings
    embed_dims: tuple[int, ...] = (128, 512, 128)
    pair_input_type: str = "pp"
    pair_input_dim: int | None = None  # None: 4 for 'pp', 6 for 'ee', 7 for 'xyzt'
    pair_extra_dim: int = 0
    pair_embed_dims: tuple[int, ...] = (64, 64, 64)
    remove_self_pair: bool = False
    use_pre_activation_pair: bool = True
    activation: Literal["gelu", "relu"] = "gelu"
    # transformer
    num_heads: int = 8
    num_layers: int = 8
    num_cls_layers: int = 2
    ffn_ratio: int = 4
    ffn_activation: Literal["gelu", "relu", "swiglu"] = "gelu"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.1
    layer_scale_init: float | None = None
    attn_backend: str = "sdpa"
    # head
    fc_params: tuple[tuple[int, float], ...] = ()
    task: Literal["classification", "regression"] = "classification"
    # misc
    trim: bool = True
    weight_init: Literal["moco", "timm"] | None = "moco"
    fix_init: bool = True
    # injected by weaver
    for_inference: bool = False
    use_amp: bool = False
    compile_model: bool = False

    @property
    def resolved_pair_input_dim(self) -> int:
        if self.pair_input_dim is not None:
            return self.pair_input_dim
        return _PAIR_INPUT_DIMS[self.pair_input_type.split(":")[0]]

    @property
    def embed_dim(self) -> int:
        return self.embed_dims[-1] if self.embed_dims else self.input_dim

    def block_config(self, *, cls_block: bool = False) -> BlockConfig:
        """Particle blocks use the configured dropouts; class-attention blocks use none (as in ParT)."""
        drop = 0.0 if cls_block else None
        return BlockConfig(
            embed_dim=self.embed_dim,
            num_heads=self.num_heads,
            ffn_ratio=self.ffn_ratio,
            dropout=self.dropout if drop is None else drop,
            attn_dropout=self.attn_dropout if drop is None else drop,
            activation_dropout=self.activation_dropout if drop is None else drop,
            activation=self.ffn_activation,
            layer_scale_init=self.layer_scale_init,
            attn_backend=self.attn_backend,
        )


class ParticleTransformer(nn.Module):
    """ParT: particle embedding + pair-bias transformer blocks + class-attention blocks + MLP head."""

    def __init__(self, cfg: ParTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.for_inference = cfg.for_inference
        dim = cfg.embed_dim
        self.embed = (
            Embed(cfg.input_dim, cfg.embed_dims, activation=cfg.activation) if cfg.embed_dims else nn.Identity()
        )
        pair_dim = cfg.resolved_pair_input_dim
        self.pair_embed = (
            PairEmbed(
                pair_dim,
                cfg.pair_extra_dim,
                (*cfg.pair_embed_dims, cfg.num_heads),
                pairwise_lv_type=cfg.pair_input_type,
                remove_self_pair=cfg.remove_self_pair,
                use_pre_activation_pair=cfg.use_pre_activation_pair,
                for_onnx=cfg.for_inference,
                sparse_eval=(False, True) if cfg.compile_model else (True, True),
            )
            if cfg.pair_embed_dims is not None and pair_dim + cfg.pair_extra_dim > 0
            else None
        )
        self.blocks = nn.ModuleList(Block(cfg.block_config()) for _ in range(cfg.num_layers))
        self.cls_blocks = (
            nn.ModuleList(Block(cfg.block_config(cls_block=True)) for _ in range(cfg.num_cls_layers))
            if cfg.num_cls_layers > 0
            else None
        )
        self.norm = nn.LayerNorm(dim)
        self.fc = self._make_head(cfg) if cfg.num_classes is not None else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.cls_blocks is not None else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.trimmer = SequenceTrimmer(enabled=cfg.trim and not cfg.for_inference, round_to_32=cfg.compile_model)
        if cfg.weight_init is not None:
            named_apply(init_weights_vit_moco if cfg.weight_init == "moco" else init_weights_vit_timm, self)
        if cfg.fix_init:
            for layer_id, block in enumerate(self.blocks, start=1):
                block.attn.out_proj.weight.data.div_(math.sqrt(2.0 * layer_id))
                block.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))

    @staticmethod
    def _make_head(cfg: ParTConfig) -> nn.Sequential:
        layers: list[nn.Module] = []
        in_dim = cfg.embed_dim
        for out_dim, drop_rate in cfg.fc_params:
            layers.append(nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Dropout(drop_rate)))
            in_dim = out_dim
        layers.append(nn.Linear(in_dim, cfg.num_classes))
        return nn.Sequential(*layers)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def encode(
        self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None, uu: Tensor | None = None,
        uu_idx: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Embed particles and pairs and run the particle blocks.

        Returns particle tokens (B, L, E), the padding mask (B, L) with True for padding, and the pair bias.
        """
        with torch.no_grad():
            if uu_idx is not None and not self.for_inference:
                uu = build_sparse_tensor(uu, uu_idx, x.size(-1))
            x, v, mask, uu = self.trimmer(x, v, mask, uu)
            padding_mask = ~mask.squeeze(1)
        x = self.embed(x).masked_fill(~mask.transpose(1, 2), 0)
        bias = None
        if (v is not None or uu is not None) and self.pair_embed is not None:
            bias = self.pair_embed(v, uu=uu, mask=mask)  # (B, H, L, L)
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, bias=bias)
        return x, padding_mask, bias

    def pool(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """Class-attention pooling (or a masked mean when there are no class blocks), then LayerNorm."""
        if self.cls_blocks is not None:
            token = self.cls_token.expand(x.size(0), -1, -1)
            for block in self.cls_blocks:
                token = block(x, x_cls=token, padding_mask=padding_mask)
            pooled = token.squeeze(1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return self.norm(pooled)

    def forward(
        self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None, uu: Tensor | None = None,
        uu_idx: Tensor | None = None,
    ) -> Tensor:
        """x: (B, C, L) features; v: (B, 4, L) (px, py, pz, E); mask: (B, 1, L), 1 for real particles."""
        if mask is None:
            mask = torch.ones_like(x[:, :1])
        tokens, padding_mask, _ = self.encode(x, v, mask, uu, uu_idx)
        pooled = self.pool(tokens, padding_mask)
        if self.fc is None:
            return pooled
        out = self.fc(pooled)
        if self.for_inference and self.cfg.task == "classification":
            out = torch.softmax(out, dim=1)
        return out


def config_with(cfg: ParTConfig, **changes: object) -> ParTConfig:
    """A copy of ``cfg`` with some fields changed (configs are frozen)."""
    return dataclasses.replace(cfg, **changes)
