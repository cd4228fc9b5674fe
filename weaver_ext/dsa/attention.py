"""Dynamic Sparse Attention cores: each query attends to its top-k keys only (DSA-ParT, see docs/dsa.md).

- ``TopkCore`` (kind ``dsa_topk``): faithful. Full scores ``q.k^T * scale + pair bias``; each query keeps its k
  highest-scoring real keys; softmax over the kept set. Cost is that of dense ParT (N x N), the output is sparse.
- ``IndexerCore`` (kind ``dsa_indexer``): sub-quadratic. The lightning indexer picks the top-k keys per query
  (``indexer.select_keys``); the main attention and ParT's pair features (``selected_pair_bias``: pair kinematics +
  PairEmbed's Conv1d/BN stack as a per-pair MLP) are computed for the selected pairs only, so memory grows as N x k.
  The indexer is trained by distillation (KL from the detached main attention over the selected keys to the
  indexer's softmax over the same keys).

Both take any attention maps (``maps.py``): with ``dsa_maps='differential'`` each kept set gets differential maps.
Backends: ``math`` (the default of these kinds) computes the kept-key softmax explicitly; any other backend computes
it through ``backends.BACKENDS`` with the dropped keys as -inf in the additive bias (scores are then computed twice).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from weaver.nn.model.ParticleTransformer import PairEmbed

from ..attention import AttentionCore, LayerSpec, attention_score_flops
from ..context import ForwardContext
from ..dropout import dropout
from ..maps import make_maps
from . import indexer as indexer_module
from .indexer import LightningIndexer, Selection, blocks_per_query, gather_keys, gather_pair_bias, select_keys
from .schedule import keys_per_query
from .statistics import entropy, layer_record, masked_mean

__all__ = ["IndexerCore", "TopkCore", "build_indexer", "build_topk", "selected_pair_bias", "topk_keep_mask",
           "validate_dsa"]

Tensor = torch.Tensor

def topk_keep_mask(scores: Tensor, kb: Tensor, pad: Tensor | None) -> Tensor:
    """Bool (B, H, Lq, Lk): the kb[b] highest-scoring keys per query, never a padded key.

    Sort-based ranks instead of ``topk`` so the per-jet k stays a tensor (exports to ONNX with dynamic lengths).
    """
    order = scores.argsort(dim=-1, descending=True)  # padding (-inf) sorts last
    positions = torch.arange(scores.size(-1), device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    keep = rank < kb.view(-1, 1, 1, 1)
    return keep if pad is None else keep & ~pad[:, None, None, :]


def _scaled_scores(q: Tensor, k: Tensor, bias: Tensor | None, pad: Tensor | None) -> Tensor:
    """``q k^T / sqrt(d) + bias``, -inf on padded keys: (B, H, Lq, Lk)."""
    scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return scores if pad is None else scores.masked_fill(pad[:, None, None, :], float("-inf"))


class _SparseCore(AttentionCore):
    """What both DSA cores share: the maps, the kept keys per jet and attention dropout on explicit weights."""

    def __init__(self, *, maps: nn.Module, backend: str, dropout: float, layer: int) -> None:
        super().__init__(backend=backend, dropout=dropout, layer=layer)
        self.maps = maps

    @staticmethod
    def kept_keys(k: Tensor, pad: Tensor | None, ctx: ForwardContext) -> tuple[Tensor, Tensor, Tensor | None]:
        """(kept keys per jet kb (B,), real keys per jet (B,), real queries (B, L) or None)."""
        length = k.size(-2)
        n_real = (~pad).sum(-1) if pad is not None else \
            torch.full((k.size(0),), length, dtype=torch.long, device=k.device)
        real_query = None if pad is None else ~pad
        return keys_per_query(n_real, ratio=ctx.ratio, topk=ctx.topk), n_real, real_query

    def drop(self, weights: Tensor) -> Tensor:
        return dropout(weights, self.dropout, self.training)

    def explicit(self) -> bool:
        """Whether the kept-key softmax is computed here (``math``) rather than by a backend."""
        return self.backend == "math"


class TopkCore(_SparseCore):
    """Dense scores, then each query keeps its kb highest-scoring real keys (kind ``dsa_topk``)."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None, key_padding_mask: Tensor | None,
                x: Tensor, ctx: ForwardContext) -> Tensor:
        pad = key_padding_mask
        kb, n_real, real_query = self.kept_keys(k, pad, ctx)
        selection_scores = _scaled_scores(q, k, bias, pad)
        keep = topk_keep_mask(selection_scores, kb, pad)

        def attend(q_part: Tensor, k_part: Tensor, first: bool) -> Tensor:
            scores = selection_scores if q_part is q else _scaled_scores(q_part, k_part, bias, pad)
            weights = None
            if self.explicit() or (first and ctx.collect):
                weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
            if first and ctx.collect:
                mass = masked_mean((torch.softmax(scores, dim=-1) * keep).sum(-1), real_query)
                kept = (kb.to(q.dtype) / n_real.clamp(min=1).to(q.dtype)).view(-1, 1).expand(-1, q.size(-2))
                ctx.records.append(layer_record(self.layer, real_query, kept=kept, mass=mass, distill=None,
                                                entropy=masked_mean(entropy(weights), real_query)))
            if self.explicit():
                return self.drop(weights) @ v
            dropped = torch.zeros_like(scores).masked_fill(~keep, float("-inf"))
            return self.dense(q_part, k_part, v, bias=dropped if bias is None else bias + dropped,
                              key_padding_mask=pad)

        return self.maps(q, k, attend)

    def flops(self, args: tuple, kwargs: dict, out: Tensor) -> tuple[int, int]:
        """Selection scores over all pairs, a sort per query, then the maps over all pairs (dropped keys masked)."""
        q, k = args[0], args[1]
        batch, heads, q_len, dim = q.shape
        scores = batch * heads * q_len * k.size(2)
        select = 2 * scores * dim
        maps_mm, maps_other = attention_score_flops(self.maps.num_maps * scores,
                                                    qk_dim=int(dim * self.maps.qk_fraction), v_dim=dim)
        if self.explicit() and self.maps.num_maps == 1:
            maps_mm -= 2 * scores * dim  # the selection scores are reused
        sort = scores * max(1, math.ceil(math.log2(max(k.size(2), 2))))
        return select + maps_mm, maps_other + sort


class IndexerCore(_SparseCore):
    """Lightning-indexer selection; attention and pair features on the selected pairs only (kind ``dsa_indexer``).

    ParT's pair features come from ``ctx.pair_fn`` for the selected pairs only; with the pair prior
    (``indexer_prior='pair'``, short inputs) the dense pair bias is built anyway, and both the indexer and the
    attention read it.
    """

    def __init__(self, embed_dim: int, *, maps: nn.Module, backend: str, dropout: float, layer: int,
                 indexer_heads: int, indexer_dim: int, block_size: int = 64, blocks: int | None = None,
                 prior: bool = False, pair_heads: int = 0) -> None:
        super().__init__(maps=maps, backend=backend, dropout=dropout, layer=layer)
        self.block_size, self.blocks = block_size, blocks
        self.indexer = LightningIndexer(embed_dim, heads=indexer_heads, dim=indexer_dim, prior=prior,
                                        pair_heads=pair_heads)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None, key_padding_mask: Tensor | None,
                x: Tensor, ctx: ForwardContext) -> Tensor:
        if x.size(1) != k.size(2):
            raise ValueError("dsa_indexer is self-attention only (class-attention blocks stay dense)")
        pad = key_padding_mask
        kb, n_real, real_query = self.kept_keys(k, pad, ctx)
        kmax = int(kb.max())
        # with the pair prior the model built ParT's dense pair bias: the indexer sees it, attention gathers from it
        dense_pairs = bias if self.indexer.pair_proj is not None else None
        sel = select_keys(self.indexer, x, pad, kmax, block_size=self.block_size, blocks=self.blocks,
                          collect=ctx.collect, directions=ctx.directions, pair_bias=dense_pairs)
        rank = torch.arange(kmax, device=q.device).view(1, 1, -1)
        # the jet's own k keys, all real; the first is always kept (finite outputs even for an empty jet)
        valid = (rank < kb.view(-1, 1, 1)) & (sel.found | (rank == 0))  # (B, L, K)
        batch, heads, length, dim = q.shape
        # inference runs over query chunks so every gathered (chunk, K) tensor stays small (time linear in N);
        # a training forward is one chunk (its statistics and the pair BatchNorm need all queries at once)
        budget = indexer_module.INDEXER_CHUNK_ELEMENTS  # gathered keys held at once: B x H x chunk x K x D
        chunk = length if ctx.collect else max(1, budget // max(1, batch * heads * kmax * dim))
        outputs = []
        for start in range(0, length, chunk):
            rows = slice(start, start + chunk)
            idx, valid_rows = sel.idx[:, rows], valid[:, rows]
            if dense_pairs is not None:
                pair = gather_pair_bias(dense_pairs[:, :, rows], idx)
            else:
                pair = None if ctx.pair_fn is None else ctx.pair_fn(idx, valid_rows, start)
            v_sel = gather_heads(v, idx)

            def attend(q_part: Tensor, k_part: Tensor, first: bool, idx: Tensor = idx, v_sel: Tensor = v_sel,
                       pair: Tensor | None = pair, valid_rows: Tensor = valid_rows) -> Tensor:
                return self._attend_selected(q_part, gather_heads(k_part, idx), v_sel, pair, valid_rows,
                                             record=(sel, valid, kb, n_real, real_query, ctx) if first else None)

            outputs.append(self.maps(q[:, :, rows], k, attend))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    def _attend_selected(self, q: Tensor, k_sel: Tensor, v_sel: Tensor, pair: Tensor | None, valid: Tensor,
                         record: tuple | None) -> Tensor:
        """q (B, H, c, D), gathered keys/values (B, H, c, K, D), pair bias (B, H, c, K) -> (B, H, c, D)."""
        collect = record is not None and record[-1].collect
        weights = None
        if self.explicit() or collect:
            scores = ((q * (1.0 / math.sqrt(q.size(-1)))).unsqueeze(-2) @ k_sel.transpose(-1, -2)).squeeze(-2)
            scores = scores if pair is None else scores + pair
            weights = torch.softmax(scores.masked_fill(~valid[:, None], float("-inf")), dim=-1)
        if collect:
            self._record(weights, *record)
        if self.explicit():
            return (self.drop(weights).unsqueeze(-2) @ v_sel).squeeze(-2)
        batch, heads, queries, kmax, dim = k_sel.shape
        rows = batch * queries  # one single-query attention per (jet, query) through the backend
        out = self.dense(q.transpose(1, 2).reshape(rows, heads, 1, -1),
                         k_sel.transpose(1, 2).reshape(rows, heads, kmax, -1),
                         v_sel.transpose(1, 2).reshape(rows, heads, kmax, -1),
                         bias=None if pair is None else pair.transpose(1, 2).reshape(rows, heads, 1, kmax),
                         key_padding_mask=~valid.reshape(rows, kmax))
        return out.view(batch, queries, heads, -1).transpose(1, 2)

    def _record(self, weights: Tensor, sel: Selection, valid: Tensor, kb: Tensor, n_real: Tensor,
                real_query: Tensor | None, ctx: ForwardContext) -> None:
        """Distillation KL (main attention -> indexer over the selected keys), mass kept, entropy of a forward."""
        i_sel = sel.scores_of(sel.idx).masked_fill(~valid, float("-inf"))
        log_p_index = torch.log_softmax(i_sel, dim=-1)
        target = weights.detach().mean(1)  # main attention over the selected keys, averaged over heads
        kl = (torch.special.xlogy(target, target) - target * log_p_index.masked_fill(~valid, 0.0)).sum(-1)
        lse = sel.lse
        scored = torch.isfinite(lse)  # False only for a jet without real particles
        mass = torch.exp(torch.logsumexp(i_sel, dim=-1) - torch.where(scored, lse, torch.zeros_like(lse)))
        mass = masked_mean(mass.masked_fill(~scored, 1.0), real_query)
        kept = (kb.to(weights.dtype) / n_real.clamp(min=1).to(weights.dtype)).view(-1, 1).expand(-1, sel.idx.size(1))
        ctx.records.append(layer_record(self.layer, real_query, kept=kept, mass=mass,
                                        entropy=masked_mean(entropy(weights), real_query),
                                        distill=masked_mean(kl, real_query)))

    def flops(self, args: tuple, kwargs: dict, out: Tensor) -> tuple[int, int]:
        """Indexer scores (all pairs, or block bounds + candidate blocks) and the maps over the kept keys only."""
        q, k = args[0], args[1]
        ctx: ForwardContext = kwargs.get("ctx") or ForwardContext()
        batch, heads, q_len, dim = q.shape
        kb, _, _ = self.kept_keys(k, kwargs.get("key_padding_mask"), ctx)
        kept_scores = heads * q_len * int(kb.sum())
        maps_mm, maps_other = attention_score_flops(self.maps.num_maps * kept_scores,
                                                    qk_dim=int(dim * self.maps.qk_fraction), v_dim=dim)
        ih, idim, length = self.indexer.heads, self.indexer.dim, k.size(2)
        nblocks = blocks_per_query(int(kb.max()), block_size=self.block_size, blocks=self.blocks)
        if nblocks * self.block_size < length:  # two-stage: 2 bounds per block, exact scores of the candidates
            scored = 2 * -(-length // self.block_size) + nblocks * self.block_size
        else:
            scored = length
        index_mm = 2 * batch * ih * q_len * scored * idim
        return maps_mm + index_mm, maps_other + 3 * batch * ih * q_len * scored


def gather_heads(x: Tensor, idx: Tensor) -> Tensor:
    """Per-head rows x (B, H, L, D) gathered at the same idx (B, Lq, K) for every head -> (B, H, Lq, K, D)."""
    batch, heads, length, dim = x.shape
    per_head = idx.unsqueeze(1).expand(-1, heads, -1, -1).reshape(batch * heads, *idx.shape[1:])
    return gather_keys(x.reshape(batch * heads, length, dim), per_head).view(batch, heads, *idx.shape[1:], dim)


def selected_pair_bias(pair_embed: PairEmbed, v: Tensor, mask: Tensor, idx: Tensor, valid: Tensor,
                       start: int = 0) -> Tensor:
    """ParT's interaction bias for the selected pairs of queries start..start+Lq only: (B, H, Lq, K), zero elsewhere.

    Pair kinematics of (i, idx[i, r]) go through PairEmbed's BatchNorm/Conv1d stack as a per-pair MLP on the real
    selected pairs (as weaver's sparse path does for all real pairs), so memory is O(Lq x K).
    """
    batch, queries = idx.shape[:2]
    rows = slice(start, start + queries)
    vi = v[:, :, rows].unsqueeze(-1).expand(-1, -1, -1, idx.size(-1))  # (B, 4, Lq, K)
    vj = gather_keys(v.transpose(1, 2), idx).permute(0, 3, 1, 2)  # (B, 4, Lq, K)
    fts = pair_embed.pairwise_lv_fts(vi, vj)  # (B, C, Lq, K)
    use = valid & mask[:, 0, rows].unsqueeze(-1).bool()  # real query, kept rank (keys are real by construction)
    if pair_embed.remove_self_pair:
        use = use & (idx != torch.arange(start, start + queries, device=idx.device).view(1, -1, 1))
    if not bool(use.any()):  # only padded queries here: the Conv1d stack cannot run on zero pairs
        return fts.new_zeros(batch, pair_embed.out_dim, queries, idx.size(-1))
    elements = pair_embed.embed(fts.permute(0, 2, 3, 1)[use].T.unsqueeze(0)).squeeze(0).T  # (M, H)
    out = elements.new_zeros(batch, queries, idx.size(-1), elements.size(-1))
    out[use] = elements
    return out.permute(0, 3, 1, 2)


def _maps(spec: LayerSpec) -> nn.Module:
    attn = spec.cfg.attn
    return make_maps(attn.dsa_maps, head_dim=spec.embed_dim // spec.num_heads, depth=spec.depth,
                     lambda_init=attn.diff_lambda_init)


def build_topk(spec: LayerSpec) -> TopkCore:
    """The ``dsa_topk`` core of one particle block."""
    return TopkCore(maps=_maps(spec), backend=spec.backend, dropout=spec.dropout, layer=spec.layer)


def build_indexer(spec: LayerSpec) -> IndexerCore:
    """The ``dsa_indexer`` core of one particle block."""
    s = spec.cfg.sparsity
    return IndexerCore(spec.embed_dim, maps=_maps(spec), backend=spec.backend, dropout=spec.dropout,
                       layer=spec.layer, indexer_heads=s.indexer_heads, indexer_dim=s.indexer_dim,
                       block_size=s.indexer_block_size, blocks=s.indexer_blocks, prior=s.indexer_prior == "angle",
                       pair_heads=spec.num_heads if s.indexer_prior == "pair" else 0)


def validate_dsa(cfg: Any) -> None:
    """Option combinations the DSA kinds cannot run (one-line errors at construction)."""
    if cfg.blocks.grad_checkpoint:
        raise ValueError("DSA attention does not support grad_checkpoint=True (selection is per forward)")
    if cfg.attn.kind != "dsa_indexer":
        return
    unsupported = [n for n, value in (("pair_extra_dim", cfg.embedding.resolved_pair_extra_dim),
                                      ("num_registers", cfg.refine.num_registers),
                                      ("attn_window", cfg.refine.attn_window), ("attn_knn", cfg.refine.attn_knn),
                                      ("global_token", int(cfg.head.global_token)))
                   if value > 0]
    if unsupported:
        raise ValueError(f"DSA option dsa_mode='indexer' does not support {', '.join(unsupported)} > 0")
    if cfg.sparsity.distill_weight == 0 and cfg.sparsity.sparsity_weight == 0:
        raise ValueError("DSA dsa_mode='indexer' needs distill_weight > 0 or sparsity_weight > 0: otherwise the "
                         "indexer gets no gradient (it never trains, and DDP fails on its unused parameters)")
