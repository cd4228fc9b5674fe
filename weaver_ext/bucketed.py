"""The bucketed training path: each jet costs its own multiplicity, with the padded path's losses and gradients.

weaver pads every batch to its longest jet (after ParT's trimmer), so attention and the per-particle layers spend
most of their work on padded slots: real jets have 30-65 of up to 128 particles. Here the trimmed batch is sorted by
multiplicity and split into length buckets, each cut to its own longest jet; the blocks, pooling and head run per
bucket and the outputs return in the batch's order.

Only ParT's BatchNorms couple the jets of a batch, and both keep the padded path's statistics exactly:
- the particle embedding's input BatchNorm runs once over the whole padded batch (padded slots included, as weaver
  does; 17 features per slot, so this costs nothing) and the rest of the embedding runs per bucket;
- the pair embedding's BatchNorms run once over every real i <= j pair of the batch (weaver's sparse evaluation
  normalises over exactly these pairs); the pair kinematics are computed on those pairs only, and each bucket's
  bias is scattered from them.
Everything else is per jet, so the loss and every gradient equal the padded path's (tests/test_bucketed_training.py
checks 1e-5 relative). Dropout draws different masks for different shapes, as it does for any other batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .context import ForwardContext, ValueResidual

__all__ = ["RealPairs", "bucketed_outputs", "can_bucket_pairs", "length_buckets", "pack_real_first",
           "real_pair_features", "real_pairs"]

Tensor = torch.Tensor


def pack_real_first(x: Tensor, v: Tensor | None, mask: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
    """Move real particles in front of padding (ParT is permutation invariant); a no-op for weaver's layout."""
    mask = mask.bool()
    counts = mask.sum(-1, keepdim=True)  # (B, 1, 1)
    prefix = torch.arange(mask.size(-1), device=mask.device) < counts
    if torch.equal(prefix, mask):
        return x, v, mask
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)
    v = None if v is None else v.gather(-1, order.expand_as(v))
    return x.gather(-1, order.expand_as(x)), v, prefix


def length_buckets(lengths: Tensor, bucket_size: int) -> list[Tensor]:
    """Jet indices sorted by multiplicity and split into groups of ``bucket_size`` (0 = a single group)."""
    order = torch.argsort(lengths, stable=True)
    if bucket_size <= 0:
        return [order]
    return list(order.split(bucket_size))


def can_bucket_pairs(pair_embed: nn.Module | None) -> bool:
    """Pair biases can be built from the real pairs alone: symmetric kinematic features, no extra pair inputs."""
    return pair_embed is None or (pair_embed.is_symmetric and not pair_embed.pairwise_input_dim)


@dataclass(frozen=True)
class RealPairs:
    """The real pairs (jet b, particle i >= j) of a batch in (b, i, j) order, as weaver's sparse PairEmbed picks."""

    b: Tensor
    i: Tensor
    j: Tensor


def real_pairs(mask: Tensor, *, remove_self_pair: bool) -> RealPairs:
    """Every pair of real particles with i >= j (i > j without self pairs); mask: (B, 1, L) bool."""
    valid = mask[:, 0]
    length = valid.size(-1)
    tril = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril(-1 if remove_self_pair else 0)
    b, i, j = (valid[:, :, None] & valid[:, None, :] & tril).nonzero(as_tuple=True)
    return RealPairs(b, i, j)


def real_pair_features(pair_features: Callable[[Tensor, Tensor], Tensor], v: Tensor, pairs: RealPairs) -> Tensor:
    """weaver's pair kinematics (``PairEmbed.pairwise_lv_fts``: ln kT, ln z, ln dR, ln m^2, ...) of the given pairs
    only: (1, F, P).

    v: (B, 4, L). The inputs are laid out (1, 4, P) contiguous like weaver's dense (B, 4, L, L) evaluation: ln m^2
    of collinear pairs is E^2 - p^2 cancelling catastrophically, so the reduction order must match weaver's exactly.
    """
    v_t = v.transpose(1, 2)  # (B, L, 4)
    vi, vj = (v_t[pairs.b, idx].T.contiguous().unsqueeze(0) for idx in (pairs.i, pairs.j))
    return pair_features(vi, vj)


def _bucket_bias(elements: Tensor, pairs: RealPairs, num_jets: int, length: int) -> Tensor:
    """The (n, H, L, L) symmetric bias of one bucket from its pairs' embeddings (P, H); zero on padded pairs.

    ``pairs.b`` is the jet's row in the bucket. Self pairs are written twice with the same value; autograd counts
    them once (the second write replaces the first)."""
    flat = elements.new_zeros(num_jets * length * length, elements.size(1))
    flat[(pairs.b * length + pairs.i) * length + pairs.j] = elements
    flat[(pairs.b * length + pairs.j) * length + pairs.i] = elements
    return flat.view(num_jets, length, length, -1).permute(0, 3, 1, 2).contiguous()


def _bucket_context(ctx: ForwardContext) -> ForwardContext:
    """The context of one bucket: the forward's schedule and record list, its own value-residual state."""
    residual = None if ctx.value_residual is None else ValueResidual()
    return dataclasses.replace(ctx, value_residual=residual, pair_fn=None)


def bucketed_outputs(model: nn.Module, x: Tensor, v: Tensor | None, mask: Tensor, *, bucket_size: int,
                     ctx: ForwardContext) -> Tensor:
    """A trimmed batch through ``model`` (a ``ParticleTransformer``) bucket by bucket: the pooled outputs, or the
    head's outputs (before any softmax), in the batch's order."""
    x, v, mask = pack_real_first(x, v, mask)
    lengths = mask.sum(dim=(1, 2))
    buckets = length_buckets(lengths, bucket_size)
    x = model.embed.input_bn(x)  # the padded batch's statistics, as the padded path
    pair_embed = model.pair_embed if v is not None else None
    if pair_embed is not None:
        pairs = real_pairs(mask, remove_self_pair=pair_embed.remove_self_pair)
        # (P, H); BatchNorm statistics over every real pair of the batch, as weaver's sparse PairEmbed
        elements = pair_embed.embed(real_pair_features(pair_embed.pairwise_lv_fts, v, pairs)).squeeze(0).T
        bucket_of = torch.empty_like(lengths)
        row_of = torch.empty_like(lengths)
        for k, idx in enumerate(buckets):
            bucket_of[idx] = k
            row_of[idx] = torch.arange(len(idx), device=idx.device)
        pair_bucket = bucket_of[pairs.b]
        order = torch.argsort(pair_bucket, stable=True)
        counts = torch.bincount(pair_bucket, minlength=len(buckets)).tolist()
        elements = elements.index_select(0, order).split(counts)
        rows = row_of[pairs.b][order].split(counts)
        pair_i, pair_j = pairs.i[order].split(counts), pairs.j[order].split(counts)
    outputs = []
    for k, idx in enumerate(buckets):
        length = int(lengths[idx].max().clamp(min=1))
        bias = None
        if pair_embed is not None:
            bias = _bucket_bias(elements[k], RealPairs(rows[k], pair_i[k], pair_j[k]), len(idx), length)
        sub_v = None if v is None else v[idx, :, :length]
        encoded = model.encode_trimmed(x[idx, :, :length], sub_v, mask[idx, :, :length], bias,
                                       ctx=_bucket_context(ctx), normalized_inputs=True)
        pooled = model.pool(encoded.tokens, encoded.padding_mask)
        outputs.append(model.fc(pooled) if model.fc is not None else pooled)
    inverse = torch.argsort(torch.cat(buckets))
    return torch.cat(outputs).index_select(0, inverse)
