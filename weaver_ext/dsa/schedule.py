"""DSA options and schedule: how many keys each query keeps, and how that fraction moves during training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["SparsityConfig", "kept_fraction", "keys_per_query"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class SparsityConfig:
    """Options of the sparse (DSA) attention kinds: kept keys, schedule, regularisers and the lightning indexer."""

    sparsity_ratio: float = 0.1  # kept fraction of the real keys at step 0
    target_sparsity: float | None = None  # kept fraction at the end of the schedule (None: = sparsity_ratio)
    sparsity_schedule: Literal["constant", "linear", "cosine"] = "constant"
    sparsity_steps: int = 1000  # training steps from sparsity_ratio to target_sparsity
    sparsity_weight: float = 0.0  # weight of (1 - attention mass kept by the top-k)
    entropy_weight: float = 0.0  # weight of the entropy of the sparse attention
    distill_weight: float = 1.0  # weight of the indexer distillation KL (indexer mode)
    topk: int | None = None  # fixed number of kept keys per query (overrides the ratio and schedule)
    indexer_heads: int = 2
    indexer_dim: int = 16
    indexer_block_size: int = 64  # keys per block of the two-stage selection (contiguous in input order)
    indexer_blocks: int | None = None  # blocks kept per query (None: max(8, ceil(4 k / block size)))
    # 'angle': + beta(i) u(i).u(j), neighbours first; 'pair': + sum_h c_h(i) U_h(i, j), ParT's dense pair bias
    # (short inputs only: the selection is then exhaustive; indexer.py)
    indexer_prior: Literal["none", "angle", "pair"] = "none"

    def __post_init__(self) -> None:
        for name in ("sparsity_ratio", "target_sparsity"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"DSA option {name}={value} must be in (0, 1] (the kept fraction of keys)")
        if self.sparsity_steps < 0:
            raise ValueError(f"DSA option sparsity_steps={self.sparsity_steps} must be >= 0")
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"DSA option topk={self.topk} must be >= 1")
        for name in ("sparsity_weight", "entropy_weight", "distill_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"DSA option {name}={getattr(self, name)} must be >= 0")
        if self.indexer_heads < 1 or self.indexer_dim < 1:
            raise ValueError("DSA options indexer_heads and indexer_dim must be >= 1")
        if self.indexer_block_size < 1 or (self.indexer_blocks is not None and self.indexer_blocks < 1):
            raise ValueError(f"DSA options indexer_block_size={self.indexer_block_size} and "
                             f"indexer_blocks={self.indexer_blocks} must be >= 1")

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each auxiliary term (``statistics.AUX_NAMES``) in the training loss."""
        return {"sparsity": self.sparsity_weight, "entropy": self.entropy_weight, "distill": self.distill_weight}


def kept_fraction(cfg: SparsityConfig, step: int) -> float:
    """Scheduled kept fraction of keys after ``step`` training steps."""
    start = cfg.sparsity_ratio
    end = start if cfg.target_sparsity is None else cfg.target_sparsity
    if cfg.sparsity_schedule == "constant":
        return start
    t = 1.0 if cfg.sparsity_steps == 0 else min(max(step, 0) / cfg.sparsity_steps, 1.0)
    if cfg.sparsity_schedule == "linear":
        return start + (end - start) * t
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def keys_per_query(n_real: Tensor, *, ratio: float, topk: int | None) -> Tensor:
    """Kept keys per jet, (B,) long: ceil(ratio * n_real) or ``topk``, clamped to [1, n_real]."""
    n_real = n_real.long()
    k = torch.full_like(n_real, topk) if topk is not None else torch.ceil(n_real.to(torch.float32) * ratio).long()
    return torch.minimum(k, n_real).clamp(min=1)
