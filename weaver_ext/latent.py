"""Latent / query tokens (Perceiver, arXiv:2103.03206): a few learned tokens cross-attend to the particles.

The cross-attention is ParT's own class-attention ``Block`` with several query tokens (keys are the tokens and the
particles), so its cost is L x (L + N) instead of N x N. Used two ways by ``ParticleTransformer``:
- encoder (``latent_tokens`` > 0): particles -> L latents -> ``latent_layers`` self-attention blocks on the latents;
- decoder head (``head='latent'``): ``head_queries`` queries read the particles and are averaged before the MLP,
  replacing the single class token.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Block, BlockConfig

__all__ = ["LatentCrossAttention", "LatentSelfAttention"]

Tensor = torch.Tensor


class LatentCrossAttention(nn.Module):
    """``num_tokens`` learned tokens updated by ``num_layers`` cross-attention blocks reading the particles."""

    def __init__(self, cfg: BlockConfig, *, num_tokens: int, num_layers: int = 1) -> None:
        super().__init__()
        if num_tokens < 1 or num_layers < 1:
            raise ValueError(f"latent tokens need num_tokens >= 1 and num_layers >= 1, got {num_tokens}, {num_layers}")
        self.tokens = nn.Parameter(torch.zeros(1, num_tokens, cfg.embed_dim))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(num_layers))

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, E) particles; padding_mask: bool (B, N), True = padded. Returns the tokens (B, L, E)."""
        tokens = self.tokens.expand(x.size(0), -1, -1)
        for block in self.blocks:
            tokens = block(x, x_cls=tokens, padding_mask=padding_mask)
        return tokens


class LatentSelfAttention(nn.Module):
    """Self-attention blocks over the latent tokens (no padding, no pair bias)."""

    def __init__(self, cfg: BlockConfig, *, num_layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(num_layers))

    def forward(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return tokens
