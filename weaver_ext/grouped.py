"""The ``grouped`` attention backend: attention per jet in the packed layout (``packed.py``).

A packed chunk is one token sequence of T rows; each group of jets is a run of rows, jets x the group's length. The
blocks hand their attention a "bias" object that says where the jets are and carries their pair terms:
- ``PairGroups`` (particle blocks): the pair embedding of each real pair, never expanded to (jets, H, L, L). The
  fused C++ kernel (``native.py``) reads it in place; elsewhere (bf16, no compiler) each group's dense bias is built
  here and attention runs by batched matmuls;
- ``ClassGroups`` (class-attention blocks): each jet's class token attends to itself and the jet's rows.
Both run as ``torch.library`` custom ops, so ``torch.compile`` keeps the loops over groups out of its graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .backends import _bmm_attention, merge_bias_and_mask
from .native import fused_class_attention, fused_grouped_attention

__all__ = ["ClassGroups", "PairGroups", "group_pair_bias", "grouped_attention"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class PairGroups:
    """The particle blocks' ``bias`` in the packed layout.

    - ``pair_terms`` (P, H): the pair embedding of every real pair i >= j (i > j without self pairs), each jet's
      pairs in row-major order (as ``bucketed.real_pairs`` lists them); (0, H) without a pair embedding;
    - ``jets`` int64 (B, 2): per jet in row order, its first row in ``pair_terms`` and its number of particles;
    - ``groups`` int64 (G, 4): per group, its first row, jets, length and first jet;
    - ``self_pairs``: whether i = j pairs have terms (else their bias is 0).
    Padded keys get -inf, except in a jet without particles (0 everywhere: no softmax of nothing)."""

    pair_terms: Tensor
    jets: Tensor
    groups: Tensor
    self_pairs: bool = True


@dataclass(frozen=True)
class ClassGroups:
    """The class-attention blocks' ``bias``: ``jets`` and ``groups`` as in ``PairGroups``; the queries are one class
    token per jet, in row order."""

    jets: Tensor
    groups: Tensor


def group_pair_bias(pair_terms: Tensor, jets: Tensor, length: int, heads: int, *, self_pairs: bool) -> Tensor:
    """The dense (n, H, length, length) bias of the n jets ``jets`` ((n, 2) rows of ``PairGroups.jets``)."""
    first, real = jets[:, 0, None, None], jets[:, 1, None, None]
    i = torch.arange(length, device=jets.device)[:, None]
    j = torch.arange(length, device=jets.device)[None, :]
    high, low = torch.maximum(i, j), torch.minimum(i, j)
    triangle = high * (high + 1) // 2 + low if self_pairs else high * (high - 1) // 2 + low
    has_term = (i < real) & (j < real) & ((i != j) | self_pairs)  # (n, L, L)
    bias = pair_terms.new_zeros(*has_term.shape, heads)
    if pair_terms.numel():
        rows = (first + triangle).clamp(0, pair_terms.size(0) - 1)
        bias = torch.where(has_term[..., None], pair_terms[rows], bias)
    bias = bias.permute(0, 3, 1, 2)
    padded_key = (j >= real) & (real > 0)  # (n, 1, L)
    return bias.masked_fill(padded_key[:, None], float("-inf"))


@torch.library.custom_op("weaverlab::grouped_self_attention", mutates_args=())
def _grouped_self_attention(q: Tensor, k: Tensor, v: Tensor, pair_terms: Tensor, jets: Tensor, groups: Tensor,
                            self_pairs: bool) -> Tensor:
    """q, k, v (1, H, T, D) over the packed rows -> (T, H, D). Rows outside every group (shape padding) get zeros.
    fp32 on CPU: the fused kernel where it is built; otherwise ``_bmm_attention`` per group on its dense bias."""
    fused = fused_grouped_attention(q, k, v, pair_terms, jets, groups, self_pairs=self_pairs)
    if fused is not None:
        return fused
    _, heads, rows, dim = q.shape
    out = q.new_zeros(rows, heads, dim)
    for first, count, length, first_jet in groups.tolist():
        span = slice(first, first + count * length)
        qg, kg, vg = (t[0, :, span].unflatten(1, (count, length)).transpose(0, 1) for t in (q, k, v))
        bias = group_pair_bias(pair_terms, jets[first_jet:first_jet + count], length, heads, self_pairs=self_pairs)
        o = _bmm_attention(qg, kg, vg, bias.to(q.dtype), dropout_p=0.0, scale=None)
        out[span].view(count, length, heads, dim).copy_(o.transpose(1, 2))
    return out


@_grouped_self_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, pair_terms: Tensor, jets: Tensor, groups: Tensor, self_pairs: bool) -> Tensor:
    return q.new_empty(q.size(2), q.size(1), q.size(3))


@torch.library.custom_op("weaverlab::grouped_class_attention", mutates_args=())
def _grouped_class_attention(q: Tensor, k: Tensor, v: Tensor, jets: Tensor, groups: Tensor) -> Tensor:
    """q (1, H, B, D): one class token per jet; k, v (1, H, B + T, D): the B class tokens, then the T packed rows.
    Each jet's token attends to itself and its jet's real rows -> (B, H, D). fp32: the kernel where it is built."""
    fused = fused_class_attention(q, k, v, jets, groups)
    if fused is not None:
        return fused
    _, heads, num_jets, dim = q.shape
    out = q.new_empty(num_jets, heads, dim)
    for first, count, length, first_jet in groups.tolist():
        own = slice(first_jet, first_jet + count)
        span = slice(num_jets + first, num_jets + first + count * length)
        kg, vg = (torch.cat((t[0, :, own, None], t[0, :, span].unflatten(1, (count, length))), dim=2).transpose(0, 1)
                  for t in (k, v))  # (jets, H, 1 + length, D): the class token first
        padded = torch.arange(length, device=q.device) >= jets[own, 1, None]  # (jets, length)
        mask = merge_bias_and_mask(None, F.pad(padded, (1, 0), value=False), q.dtype)  # the class key: never padded
        o = _bmm_attention(q[0, :, own, None].transpose(0, 1), kg, vg, mask, dropout_p=0.0, scale=None)
        out[own] = o[:, :, 0]
    return out


@_grouped_class_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, jets: Tensor, groups: Tensor) -> Tensor:
    return q.new_empty(q.size(2), q.size(1), q.size(3))


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, *, bias: PairGroups | ClassGroups | None = None,
                      key_padding_mask: Tensor | None = None, dropout_p: float = 0.0,
                      scale: float | None = None) -> Tensor:
    """The ``grouped`` backend (``backends.BACKENDS``): (1, H, Lq, D) outputs. The padding is in ``bias``, so
    ``key_padding_mask`` is not read."""
    if dropout_p > 0 or scale is not None:
        raise ValueError("attention backend 'grouped' is inference-only (no dropout, default scale)")
    if isinstance(bias, PairGroups):
        out = torch.ops.weaverlab.grouped_self_attention(q, k, v, bias.pair_terms, bias.jets, bias.groups,
                                                         bias.self_pairs)
    elif isinstance(bias, ClassGroups):
        out = torch.ops.weaverlab.grouped_class_attention(q, k, v, bias.jets, bias.groups)
    else:
        raise ValueError("attention backend 'grouped' runs only in the packed fast inference path (FastParT)")
    return out.unsqueeze(0).transpose(1, 2)
