"""A configurable jet transformer: the ParT skeleton with every attention variant selectable by option.

``networks/transformer.py`` exposes it to weaver. ``attention`` picks the attention module (softmax or
differential), ``pair_bias=False`` drops ParT's pair embedding (a plain transformer; needed for the flash backend);
all ParT refinements (value residual, registers, local attention, positional encodings, latent tokens,
checkpointing, LayerScale, SwiGLU) are inherited options of ``ParTConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .attention import MultiheadAttention
from .diff_attention import DiffParTConfig, DiffParticleTransformer
from .part import config_with


@dataclass(frozen=True)
class TransformerConfig(DiffParTConfig):
    """ParT + differential-attention options plus the attention type and whether to use the pair bias."""

    attention: Literal["softmax", "differential"] = "softmax"
    pair_bias: bool = True


class ConfigurableTransformer(DiffParticleTransformer):
    """ParT-shaped transformer whose attention type and pair bias are options."""

    cfg: TransformerConfig

    def __init__(self, cfg: TransformerConfig) -> None:
        if not cfg.pair_bias:
            cfg = config_with(cfg, pair_input_dim=0, pair_extra_dim=0)
        super().__init__(cfg)

    def make_attention(self, index: int, *, cls_block: bool = False) -> MultiheadAttention | None:
        if self.cfg.attention == "softmax":
            return None
        return super().make_attention(index, cls_block=cls_block)
