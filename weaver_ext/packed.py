"""The packed layout of the fast inference path: a batch's jets as one token matrix.

The grouped layout runs each group of jets as its own (jets, length) batch, so every linear layer runs once per
group on jets x length rows. Compiled engines must also round those shapes for oneDNN's kernel cache (groups of 32,
lengths to a multiple of 8): 23% of the rows were padding on real jets. Here the groups of a batch are concatenated
into one sequence of T rows, each group a run of jets x its own longest length (groups chosen for the fewest padded
slots, ``length_buckets``):
- everything token-wise (embedding, norms, projections, MLPs, residuals) runs once per batch on all T rows: large
  matrix products, few padded rows, and one shape per ``row_multiple`` rows for oneDNN;
- only attention runs per group, by the ``grouped`` backend (``backends.py``). Its "bias" carries the groups
  and their pair biases, with the padding already at -inf; the model's own blocks run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from .attention import DenseCore
from .backends import ClassGroups, PairGroups
from .bucketed import RealPairs, length_buckets, pack_real_first, real_pair_features, real_pairs

__all__ = ["PackedBatch", "PackedShapes", "add_pair_terms", "pack_batch", "packed_outputs", "packed_supported",
           "run_in_chunks"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class PackedShapes:
    """How the packed layout cuts a batch. Measured on Zen 5 (docs/benchmarks.md): a whole batch of 256 jets as one
    matrix spills the MLPs' activations out of the caches (the pair MLP of 250k rows ran at 60 GFLOP/s, in chunks of
    16k rows at 280), so a batch runs as chunks of jets and the pair MLP in chunks of rows."""

    chunk_jets: int = 64  # jets per token matrix (by multiplicity)
    group_jets: int = 16  # about this many jets per attention group within it (fewest padded slots)
    row_multiple: int = 128  # token rows rounded up with zero rows: few matrix shapes for oneDNN's kernel cache
    pair_chunk_rows: int = 16384  # pair MLP rows per call (the last call padded with zero rows)


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
    """One batch in the packed layout (built eagerly: its shapes depend on the data).

    Rows: group after group, each jets x length, real particles first; then zero rows up to the row multiple."""

    order: Tensor  # (B,) the batch's jet indices in row order
    features: Tensor  # (1, F, T) particle features per row (zero on padded rows)
    mask: Tensor  # (1, 1, T) bool: True on real particles
    groups: Tensor  # int64 (G, 5): first row, jets, length, first bias element, first jet (``PairGroups``)
    key_bias: Tensor  # (T,) 0 on real rows, -inf on padded ones: the class attention's key mask
    pair_bias: Tensor  # (S,) every group's (jets, H, length, length) bias, flat: -inf on padded keys (none in jets
    # without particles, as ``run_blocks``), the pair terms added later (``add_pair_terms``)
    pairs: RealPairs  # the real pairs i >= j, in the batch's own (packed) jet indices
    pair_index: Tensor  # (2, P, H) flat positions in ``pair_bias`` of each pair's (i, j) and (j, i) terms
    vectors: Tensor  # (B, 4, L) four-vectors, real particles first (for the pair kinematics)


def pack_batch(x: Tensor, v: Tensor, mask: Tensor, *, bucket_size: int, heads: int, row_multiple: int = 1,
               remove_self_pair: bool = False) -> PackedBatch:
    """Sort a weaver batch (x (B, F, L), v (B, 4, L), mask (B, 1, L)) into groups and lay them out as rows."""
    x, v, mask = pack_real_first(x, v, mask)
    lengths = mask.sum(dim=(1, 2))
    buckets = length_buckets(lengths, bucket_size)
    device = x.device
    num_jets = x.size(0)
    group_rows, row_jet, row_pos, key_bias, bias_init = [], [], [], [], []
    jet_base = torch.empty(num_jets, dtype=torch.long, device=device)  # first bias element of each jet
    jet_length = torch.empty(num_jets, dtype=torch.long, device=device)
    first = offset = first_jet = 0
    for idx in buckets:
        jets, length = len(idx), max(int(lengths[idx].max()), 1)
        positions = torch.arange(length, device=device)
        real = positions < lengths[idx, None]  # (jets, length)
        bias = torch.zeros(jets, length, device=device).masked_fill_(~real, float("-inf"))
        key_bias.append(bias.flatten())  # class attention: the class token is a key too, so never all masked
        bias = bias.masked_fill(~real.any(dim=1, keepdim=True), 0.0)  # jets without particles: unmasked (run_blocks)
        bias_init.append(bias[:, None, None, :].expand(jets, heads, length, length).flatten())
        group_rows.append((first, jets, length, offset, first_jet))
        row_jet.append(idx.repeat_interleave(length))
        row_pos.append(positions.repeat(jets))
        jet_base[idx] = offset + torch.arange(jets, device=device) * heads * length * length
        jet_length[idx] = length
        first, offset, first_jet = first + jets * length, offset + jets * heads * length * length, first_jet + jets
    rows = -(-first // row_multiple) * row_multiple
    row_jet, row_pos = torch.cat(row_jet), torch.cat(row_pos)
    features = x.new_zeros(rows, x.size(1))
    features[:first] = x[row_jet, :, row_pos]
    real_rows = torch.zeros(rows, dtype=torch.bool, device=device)
    real_rows[:first] = row_pos < lengths[row_jet]
    pairs = real_pairs(mask, remove_self_pair=remove_self_pair)
    base, length = jet_base[pairs.b, None], jet_length[pairs.b, None]
    head_offset = torch.arange(heads, device=device) * length * length  # (P, H)
    pair_index = torch.stack((base + head_offset + pairs.i[:, None] * length + pairs.j[:, None],
                              base + head_offset + pairs.j[:, None] * length + pairs.i[:, None]))
    return PackedBatch(
        order=torch.cat(buckets), features=features.T.unsqueeze(0).contiguous(), mask=real_rows.view(1, 1, rows),
        groups=torch.tensor(group_rows, dtype=torch.long), key_bias=torch.cat(
            (torch.cat(key_bias), x.new_zeros(rows - first))),
        pair_bias=torch.cat(bias_init), pairs=pairs, pair_index=pair_index, vectors=v)


def add_pair_terms(batch: PackedBatch, pair_features: Callable[[Tensor, Tensor], Tensor],
                   mlp: Callable[[Tensor], Tensor], *, chunk_rows: int) -> None:
    """Add the pair embedding of every real pair to ``batch.pair_bias`` in place, symmetrically: the kinematics of
    weaver's ``PairEmbed`` (``pair_features``) and the (folded, maybe compiled) ``mlp``, in chunks of rows."""
    if not len(batch.pairs.b):
        return
    fts = real_pair_features(pair_features, batch.vectors, batch.pairs).squeeze(0).T  # (P, F)
    h = run_in_chunks(mlp, fts, chunk_rows).to(batch.pair_bias.dtype)  # (P, H)
    batch.pair_bias.index_put_((batch.pair_index[0],), h)
    batch.pair_bias.index_put_((batch.pair_index[1],), h)


def packed_supported(model: nn.Module) -> bool:
    """The packed layout runs the model's own blocks on one token sequence: every layer but attention must be
    token-wise, attention dense, and the pooling ParT's class attention."""
    cfg = model.cfg
    return (model.supports_fast_inference and model.cls_blocks is not None and not cfg.head.global_token
            and model.latent_head is None and model.latent_encoder is None and model.registers is None
            and model.pos_encoding is None and not cfg.refine.attn_window and not cfg.refine.attn_knn
            and all(isinstance(block.attn.core, DenseCore) for block in (*model.blocks, *model.cls_blocks)))


def packed_outputs(model: nn.Module, features: Tensor, mask: Tensor, pair_bias: Tensor, key_bias: Tensor,
                   groups: Tensor, order: Tensor) -> Tensor:
    """The model's head outputs (B, classes) in row order (``PackedBatch.order``), before any softmax: its blocks on
    all rows at once, attention per group (``grouped`` backend). Tensors only, so it compiles with dynamic shapes."""
    ctx = replace(model.new_context(), backend="grouped")
    tokens = model.encode_trimmed(features, None, mask, PairGroups(pair_bias, groups), ctx=ctx).tokens
    token = model.cls_token.expand(1, order.size(0), -1).to(tokens.dtype)
    class_groups = ClassGroups(key_bias, groups)
    for block in model.cls_blocks:
        token = block(tokens, x_cls=token, bias=class_groups, ctx=ctx)
    pooled = model.norm(token[0])
    return model.fc(pooled) if model.fc is not None else pooled
