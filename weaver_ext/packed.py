"""The packed layout of the fast inference path: a chunk of jets as one token matrix.

The grouped layout runs each group of jets as its own (jets, length) batch, so every linear layer runs once per
group on jets x length rows. Compiled engines must also round those shapes for oneDNN's kernel cache (groups of 32,
lengths to a multiple of 8): 23% of the rows were padding on real jets. Here the groups of a chunk are concatenated
into one sequence of T rows, each group a run of jets x its own longest length (groups chosen for the fewest padded
slots, ``length_buckets``):
- everything token-wise (embedding, norms, projections, MLPs, residuals) runs once per chunk on all T rows: large
  matrix products, few padded rows, and one shape per ``row_multiple`` rows for oneDNN;
- only attention runs per jet, by the ``grouped`` backend (``grouped.py``): its "bias" object carries the groups
  and the pair terms of the real pairs, and the model's own blocks run unchanged. In fp32 a fused C++ kernel
  (``native.py``) computes it without ever expanding the pair bias to (jets, H, L, L).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from .attention import DenseCore
from .bucketed import RealPairs, length_buckets, pack_real_first, real_pair_features, real_pairs
from .grouped import ClassGroups, PairGroups

__all__ = ["BMM_SHAPES", "PackedBatch", "PackedShapes", "pack_batch", "packed_outputs", "packed_supported",
           "pair_terms", "run_in_chunks"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class PackedShapes:
    """How the packed layout cuts a batch. A whole batch of 256 jets as one matrix spills the MLPs' activations out
    of the caches (the pair MLP on 250k rows ran at 60 GFLOP/s, in chunks of 16k rows at 280: Zen 5, 2 threads), so
    a batch runs as chunks of jets and the pair MLP in chunks of rows. The defaults are the fastest measured with the
    fused kernel (docs/benchmarks.md, session 10); ``BMM_SHAPES`` suit the batched-matmul path, whose cost grows
    with the number of groups."""

    chunk_jets: int = 128  # jets per token matrix (by multiplicity)
    group_jets: int = 4  # about this many jets per group within it (fewest padded slots)
    row_multiple: int = 128  # token rows rounded up with zero rows: few matrix shapes for oneDNN's kernel cache
    pair_chunk_rows: int = 16384  # pair MLP rows per call (the last call padded with zero rows)


BMM_SHAPES = PackedShapes(chunk_jets=64, group_jets=16)


def run_in_chunks(fn: Callable[[Tensor], Tensor], rows: Tensor, chunk: int) -> Tensor:
    """``fn`` on ``rows`` in pieces of exactly ``chunk`` rows (the last padded with zeros), outputs concatenated:
    the activations stay in cache, and a compiled ``fn`` sees one shape."""
    total = rows.size(0)
    extra = -total % chunk
    if extra:
        rows = torch.cat((rows, rows.new_zeros(extra, *rows.shape[1:])))
    return torch.cat([fn(piece) for piece in rows.split(chunk)])[:total]


@dataclass(frozen=True)
class PackedBatch:
    """One chunk of jets in the packed layout (built eagerly: its shapes depend on the data).

    Rows: group after group, each jets x length, real particles first; then zero rows up to the row multiple."""

    order: Tensor  # (B,) the chunk's jet indices in row order
    features: Tensor  # (1, F, T) particle features per row (zero on padded rows)
    mask: Tensor  # (1, 1, T) bool: True on real particles
    groups: Tensor  # int64 (G, 4): first row, jets, length, first jet (``grouped.PairGroups``)
    jets: Tensor  # int64 (B, 2) in row order: first row of the jet's pair terms, particles
    pairs: RealPairs  # the real pairs i >= j, in the chunk's own (packed) jet indices
    vectors: Tensor  # (B, 4, L) four-vectors, real particles first (for the pair kinematics)


def pack_batch(x: Tensor, v: Tensor, mask: Tensor, *, bucket_size: int, row_multiple: int = 1,
               remove_self_pair: bool = False) -> PackedBatch:
    """Sort jets (x (B, F, L), v (B, 4, L), mask (B, 1, L)) into groups and lay them out as rows."""
    x, v, mask = pack_real_first(x, v, mask)
    lengths = mask.sum(dim=(1, 2))
    buckets = length_buckets(lengths, bucket_size)  # ascending lengths: each group's last jet is its longest
    order = torch.cat(buckets)
    device = x.device
    sizes = torch.tensor([len(b) for b in buckets], device=device)
    last = torch.cumsum(sizes, 0) - 1
    group_length = lengths[order][last].clamp(min=1)
    slots = group_length.repeat_interleave(sizes)  # (B,) rows per jet, in row order
    jet_first_row = torch.cumsum(slots, 0) - slots
    first = int(slots.sum())
    rows = -(-first // row_multiple) * row_multiple
    row_jet = torch.arange(len(order), device=device).repeat_interleave(slots)  # position in ``order``
    row_pos = torch.arange(first, device=device) - jet_first_row[row_jet]
    row_jet = order[row_jet]
    first_jet = last - sizes + 1
    group_rows = torch.stack((jet_first_row[first_jet], sizes, group_length, first_jet), dim=1)
    features = x.new_zeros(rows, x.size(1))
    features[:first] = x[row_jet, :, row_pos]
    real_rows = torch.zeros(rows, dtype=torch.bool, device=device)
    real_rows[:first] = row_pos < lengths[row_jet]
    pairs = real_pairs(mask, remove_self_pair=remove_self_pair)
    pair_counts = lengths * (lengths - 1) // 2 if remove_self_pair else lengths * (lengths + 1) // 2
    pair_row = torch.cumsum(pair_counts, 0) - pair_counts  # real_pairs lists them jet by jet
    return PackedBatch(order=order, features=features.T.unsqueeze(0).contiguous(), mask=real_rows.view(1, 1, rows),
                       groups=group_rows.long().cpu(),
                       jets=torch.stack((pair_row[order], lengths[order])).T.contiguous().long(), pairs=pairs,
                       vectors=v)


def pair_terms(batch: PackedBatch, pair_features: Callable[[Tensor, Tensor], Tensor],
               mlp: Callable[[Tensor], Tensor], *, chunk_rows: int) -> Tensor:
    """The pair embedding of every real pair (P, H): the kinematics of weaver's ``PairEmbed`` (``pair_features``)
    and the (folded, maybe compiled) ``mlp``, in chunks of rows."""
    fts = real_pair_features(pair_features, batch.vectors, batch.pairs).squeeze(0).T  # (P, F)
    return run_in_chunks(mlp, fts, chunk_rows).float()


def packed_supported(model: nn.Module) -> bool:
    """The packed layout runs the model's own blocks on one token sequence: every layer but attention must be
    token-wise, attention dense, and the pooling ParT's class attention."""
    cfg = model.cfg
    return (model.supports_fast_inference and model.cls_blocks is not None and not cfg.head.global_token
            and model.latent_head is None and model.latent_encoder is None and model.registers is None
            and model.pos_encoding is None and not cfg.refine.attn_window and not cfg.refine.attn_knn
            and all(isinstance(block.attn.core, DenseCore) for block in (*model.blocks, *model.cls_blocks)))


def packed_outputs(model: nn.Module, features: Tensor, mask: Tensor, pair_terms: Tensor, jets: Tensor,
                   groups: Tensor, *, self_pairs: bool) -> Tensor:
    """The model's head outputs (B, classes) in row order (``PackedBatch.order``), before any softmax: its blocks on
    all rows at once, attention per jet (``grouped`` backend). Tensors only, so it compiles with dynamic shapes."""
    ctx = replace(model.new_context(), backend="grouped")
    tokens = model.encode_trimmed(features, None, mask, PairGroups(pair_terms, jets, groups, self_pairs),
                                  ctx=ctx).tokens
    token = model.cls_token.expand(1, jets.size(0), -1).to(tokens.dtype)
    class_groups = ClassGroups(jets, groups)
    for block in model.cls_blocks:
        token = block(tokens, x_cls=token, bias=class_groups, ctx=ctx)
    pooled = model.norm(token[0])
    return model.fc(pooled) if model.fc is not None else pooled
