"""Per-forward state, handed down explicitly ``model -> run_blocks -> Block -> attention -> core``.

Nothing a forward needs is stored as a module attribute: the model builds one ``ForwardContext`` per call, the
attention cores read what they need from it (DSA's kept fraction, the selected-pair bias) and append what they
measured (auxiliary losses, statistics) as ``LayerRecord``s, which the model reads back after the blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["ForwardContext", "LayerRecord", "PairBiasFn", "ValueResidual"]

Tensor = torch.Tensor

# (idx (B, Lq, K), valid (B, Lq, K), first query) -> pair bias of the selected keys (B, H, Lq, K)
PairBiasFn = Callable[[Tensor, Tensor, int], Tensor]


@dataclass
class ValueResidual:
    """Carries the first layer's values (B, H, L, D) to later layers (value residual learning, arXiv:2410.17897)."""

    v0: Tensor | None = None


@dataclass
class LayerRecord:
    """What one attention layer measured in a training forward: loss terms (with gradient) and statistics."""

    layer: int
    aux: dict[str, Tensor]
    stats: dict[str, float]
    weight: float = 1.0  # real queries the means were taken over (merges a layer's length buckets exactly)


@dataclass
class ForwardContext:
    """Everything one forward hands to its attention layers; a fresh one per call."""

    ratio: float = 1.0  # DSA: kept fraction of keys (the schedule's value at this step)
    topk: int | None = None  # DSA: fixed kept keys per query (overrides ratio)
    collect: bool = False  # training forward: record auxiliary losses and statistics
    pair_fn: PairBiasFn | None = None  # DSA indexer: ParT's pair bias evaluated on selected pairs only
    directions: Tensor | None = None  # DSA indexer with indexer_prior='angle': unit directions (B, L, 3)
    value_residual: ValueResidual | None = None
    backend: str | None = None  # dense softmax attention by this backend instead of each core's own (fast inference)
    merged_padding: bool = False  # the padding is added to the pair bias once, before the blocks (see run_blocks)
    records: list[LayerRecord] = field(default_factory=list)
