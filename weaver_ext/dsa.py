"""Dynamic Sparse Attention for ParT (DSA-ParT): keep only the top-k keys per query, on a training schedule.

Two modes (``DSAConfig.dsa_mode``):

- ``topk``: faithful. Full scores ``q.k^T * scale + pair bias``; each query keeps its k highest-scoring real keys;
  softmax over the kept set (the others are -inf). Cost is that of dense ParT (N x N), the output is sparse.
- ``indexer``: sub-quadratic core. A cheap scorer (a few low-dimensional ReLU heads, as DeepSeek-V3.2's lightning
  indexer) picks the top-k keys per query, chunked over queries so no N x N tensor is ever held. For long inputs the
  selection has two stages so that it does not score all N x N pairs either: keys are cut into contiguous blocks of
  ``indexer_block_size``; each query scores every block by an upper bound of the indexer score of any key inside it
  (per-dimension min/max of the block's indexer keys, as in Quest) and only the keys of its best ``indexer_blocks``
  blocks are scored exactly: O(N x (N / block + blocks x block)) instead of O(N^2). When those blocks would cover
  every key the exhaustive single-stage selection is used (identical result, less work). The main attention
  and ParT's pairwise interaction features (pair kinematics + PairEmbed's Conv1d/BN stack as a per-pair MLP) are
  computed only for the selected (i, j) pairs: memory grows as N x k. The scorer is trained by distillation (KL from
  the detached main attention over the selected keys to the scorer's softmax over the same keys).

With ``dsa_enabled=False`` the model is exactly weaver_ext's ParT (same modules, outputs and state_dict keys).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from weaver.nn.model.ParticleTransformer import PairEmbed

from .attention import MultiheadAttention
from .part import ParTConfig, ParticleTransformer

Tensor = torch.Tensor

STAT_NAMES = ("kept_fraction", "entropy", "mass_kept")
AUX_NAMES = ("sparsity", "entropy", "distill")
_INDEXER_CHUNK_ELEMENTS = 1 << 20  # indexer scores held at once: B x heads x chunk x N <= 1M floats


@dataclass(frozen=True)
class DSAConfig(ParTConfig):
    """ParT options plus the dynamic-sparse-attention ones (all settable with weaver ``-o``)."""

    dsa_enabled: bool = False
    dsa_mode: Literal["topk", "indexer"] = "topk"
    sparsity_ratio: float = 0.1  # kept fraction of the real keys at step 0
    target_sparsity: float | None = None  # kept fraction at the end of the schedule (None: = sparsity_ratio)
    sparsity_schedule: Literal["constant", "linear", "cosine"] = "constant"
    sparsity_steps: int = 1000  # training steps from sparsity_ratio to target_sparsity
    sparsity_weight: float = 0.0  # weight of (1 - attention mass kept by the top-k)
    entropy_weight: float = 0.0  # weight of the entropy of the sparse attention
    distill_weight: float = 1.0  # weight of the indexer distillation KL (indexer mode)
    dsa_layers: tuple[int, ...] | None = None  # sparse particle blocks (None: all)
    topk: int | None = None  # fixed number of kept keys per query (overrides the ratio and schedule)
    indexer_heads: int = 2
    indexer_dim: int = 16
    indexer_block_size: int = 64  # keys per block of the two-stage selection (contiguous in input order)
    indexer_blocks: int | None = None  # blocks kept per query (None: max(8, ceil(4 k / block size)))

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
        if self.dsa_layers is not None:
            bad = [i for i in self.dsa_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"DSA option dsa_layers={self.dsa_layers}: {bad} not in 0..{self.num_layers - 1}")
        if self.dsa_enabled and self.dsa_mode == "indexer":
            unsupported = [n for n in ("pair_extra_dim", "num_registers", "attn_window", "attn_knn")
                           if getattr(self, n) > 0]
            if unsupported:
                raise ValueError(f"DSA option dsa_mode='indexer' does not support {', '.join(unsupported)} > 0")
        if self.dsa_enabled and self.dsa_mode == "indexer" and self.distill_weight == 0 and self.sparsity_weight == 0:
            raise ValueError("DSA dsa_mode='indexer' needs distill_weight > 0 or sparsity_weight > 0: otherwise the "
                             "indexer gets no gradient (it never trains, and DDP fails on its unused parameters)")
        if self.dsa_enabled and self.grad_checkpoint:
            raise ValueError("DSA (dsa_enabled=True) does not support grad_checkpoint=True (selection is per forward)")

    @property
    def sparse_layers(self) -> tuple[int, ...]:
        if not self.dsa_enabled:
            return ()
        return tuple(range(self.num_layers)) if self.dsa_layers is None else tuple(sorted(set(self.dsa_layers)))


def kept_fraction(cfg: DSAConfig, step: int) -> float:
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


@dataclass
class DSAContext:
    """Per-forward information the model hands to its sparse attention modules."""

    ratio: float
    topk: int | None
    collect: bool  # training forward: compute auxiliary losses and statistics
    # (idx (B, Lq, K), valid (B, Lq, K), first query) -> bias (B, H, Lq, K)
    pair_fn: Callable[[Tensor, Tensor, int], Tensor] | None = None
    aux: dict[str, list[Tensor]] = field(default_factory=lambda: {n: [] for n in AUX_NAMES})


class LightningIndexer(nn.Module):
    """Cheap key scorer: score(i, j) = sum_h w_h(i) * ReLU(q_h(i) . k(j)) with few, low-dimensional heads."""

    def __init__(self, embed_dim: int, *, heads: int, dim: int) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.q_proj = nn.Linear(embed_dim, heads * dim)
        self.k_proj = nn.Linear(embed_dim, dim)
        self.w_proj = nn.Linear(embed_dim, heads)
        for lin in (self.q_proj, self.k_proj, self.w_proj):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, L, E) -> q (B, h, L, d), k (B, L, d), w (B, h, L, 1)."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.dim).transpose(1, 2) / math.sqrt(self.dim)
        w = self.w_proj(x).transpose(1, 2).unsqueeze(-1) / math.sqrt(self.heads)
        return q, self.k_proj(x), w


def _indexer_scores(q: Tensor, k: Tensor, w: Tensor, pad: Tensor | None) -> Tensor:
    """Indexer scores of a query chunk against all keys: (B, c, N), -inf on padded keys.

    q (B, h, c, d) is flattened to one (h*c, d) x (d, N) matmul per jet (no per-head copy of k); without autograd
    the ReLU, head weights and padding mask are applied in place (this is the only O(N^2) work of indexer mode).
    """
    batch, heads, chunk, dim = q.shape
    s = torch.bmm(q.reshape(batch, heads * chunk, dim), k.transpose(1, 2)).view(batch, heads, chunk, -1)
    if torch.is_grad_enabled():
        s = (F.relu(s) * w).sum(1)
    else:
        s = s.relu_().mul_(w)
        s = s[:, 0] if heads == 1 else s.sum(1)
    return s if pad is None else s.masked_fill_(pad[:, None, :], float("-inf"))


def _indexer_lse(q: Tensor, k: Tensor, w: Tensor, pad: Tensor | None) -> Tensor:
    return torch.logsumexp(_indexer_scores(q, k, w, pad), dim=-1)


def key_blocks(k: Tensor, pad: Tensor | None, block: int) -> tuple[Tensor, Tensor]:
    """Indexer keys k (B, N, d) cut into blocks of ``block``: rows (B, nb, block * d) and missing (B, nb, block).

    ``missing`` marks padded keys and the slots past the last key (the last block is filled up with zeros).
    """
    if pad is None:
        pad = torch.zeros(k.shape[:2], dtype=torch.bool, device=k.device)
    return _blocked(k, block, 0.0), _blocked(pad, block, True)


def block_key_bounds(rows: Tensor, missing: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Element-wise max and min of the real keys of each block (``key_blocks`` output).

    -> kmax, kmin (B, nb, d) (0 for blocks without a real key) and empty (B, nb).
    """
    batch, nblocks, block = missing.shape
    keys = rows.view(batch, nblocks, block, -1)
    miss = missing.unsqueeze(-1)
    empty = miss.all(2)  # (B, nb, 1)
    kmax = keys.masked_fill(miss, float("-inf")).amax(2).masked_fill(empty, 0.0)
    kmin = keys.masked_fill(miss, float("inf")).amin(2).masked_fill(empty, 0.0)
    return kmax, kmin, empty.squeeze(-1)


def block_score_bound(q: Tensor, w: Tensor, kmax: Tensor, kmin: Tensor, empty: Tensor) -> Tensor:
    """Upper bound of the indexer score of every key of each block: q (B, h, c, d) -> (B, c, nb), -inf if empty.

    Per head, q.k over a block lies in [q+.kmin + q-.kmax, q+.kmax + q-.kmin] (q+ = max(q, 0), q- = min(q, 0));
    ReLU is monotonic, so w_h ReLU(upper) bounds a head with w_h >= 0 and w_h ReLU(lower) one with w_h < 0.
    """
    qp, qn = q.clamp(min=0), q.clamp(max=0)
    kmax_t, kmin_t = kmax.transpose(1, 2).unsqueeze(1), kmin.transpose(1, 2).unsqueeze(1)  # (B, 1, d, nb)
    upper = qp @ kmax_t + qn @ kmin_t
    lower = qp @ kmin_t + qn @ kmax_t
    bound = torch.where(w >= 0, w * upper.relu(), w * lower.relu()).sum(1)
    return bound.masked_fill(empty[:, None, :], float("-inf"))


def _blocked(x: Tensor, block: int, fill: float | bool) -> Tensor:
    """x (B, N, ...) padded with ``fill`` to whole blocks and viewed as (B, nb, block * ...): one row per block."""
    extra = -x.size(1) % block
    if extra:
        x = torch.cat((x, x.new_full((x.size(0), extra, *x.shape[2:]), fill)), dim=1)
    return x.reshape(x.size(0), x.size(1) // block, -1)


def _candidate_scores(q: Tensor, rows: Tensor, w: Tensor, best: Tensor, cand_out: Tensor) -> Tensor:
    """Exact indexer scores of the keys of each query's chosen blocks best (B, c, m): (B, c, m * block).

    Whole blocks are gathered as ``rows`` (B, nb, block * d) of ``key_blocks``, much cheaper than gathering
    m * block single keys; -inf where ``cand_out`` (padding, or past the last key).
    """
    batch, chunk, _ = best.shape
    keys = _gather_keys(rows, best).view(batch, chunk, -1, q.size(-1))  # (B, c, m * block, d)
    s = q.transpose(1, 2) @ keys.transpose(-1, -2)  # (B, c, h, m * block)
    s = (F.relu(s) * w.transpose(1, 2)).sum(2)
    return s.masked_fill(cand_out, float("-inf"))


def _candidate_lse(q: Tensor, rows: Tensor, w: Tensor, best: Tensor, cand_out: Tensor) -> Tensor:
    return torch.logsumexp(_candidate_scores(q, rows, w, best, cand_out), dim=-1)


def _gather_keys(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, L, ...) gathered at idx (B, Lq, K) -> (B, Lq, K, ...).

    One ``index_select`` on the flattened batch: several times faster on CPU than advanced indexing ``x[b, idx]``.
    """
    batch, length = x.shape[:2]
    offsets = (torch.arange(batch, device=x.device) * length).view(-1, *([1] * (idx.dim() - 1)))
    rows = x.reshape(batch * length, *x.shape[2:]).index_select(0, (idx + offsets).reshape(-1))
    return rows.view(*idx.shape, *x.shape[2:])


def topk_keep_mask(scores: Tensor, kb: Tensor, pad: Tensor | None) -> Tensor:
    """Bool (B, H, Lq, Lk): the kb[b] highest-scoring keys per query, never a padded key.

    Sort-based ranks instead of ``topk`` so the per-jet k stays a tensor (exports to ONNX with dynamic lengths).
    """
    order = scores.argsort(dim=-1, descending=True)  # padding (-inf) sorts last
    positions = torch.arange(scores.size(-1), device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    keep = rank < kb.view(-1, 1, 1, 1)
    return keep if pad is None else keep & ~pad[:, None, None, :]


def _masked_mean(values: Tensor, real_query: Tensor | None) -> Tensor:
    """Mean of values (B, [H,] L) over real queries (and heads)."""
    if real_query is None:
        return values.mean()
    m = real_query.to(values.dtype)
    if values.dim() == 3:
        m = m.unsqueeze(1).expand_as(values)
    return (values * m).sum() / m.sum().clamp(min=1)


def _entropy(weights: Tensor) -> Tensor:
    """Entropy over the last axis; zero weights contribute 0 with a finite gradient (xlogy's is NaN there)."""
    return -(weights * torch.log(torch.where(weights > 0, weights, torch.ones_like(weights)))).sum(-1)


class DSAAttention(MultiheadAttention):
    """Self-attention over the top-k keys per query (``topk`` or ``indexer`` selection, see the module doc)."""

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float, mode: str, indexer_heads: int,
                 indexer_dim: int, block_size: int = 64, blocks: int | None = None, backend: str = "math") -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, backend=backend)
        if mode not in ("topk", "indexer"):
            raise ValueError(f"dsa_mode={mode!r}; valid modes are 'topk', 'indexer'")
        self.mode = mode
        self.block_size, self.blocks = block_size, blocks
        self.indexer = LightningIndexer(embed_dim, heads=indexer_heads, dim=indexer_dim) if mode == "indexer" else None
        self.ctx: DSAContext | None = None
        self._x: Tensor | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Clear the running statistics (sums over training forwards)."""
        self.stats_sum = dict.fromkeys(STAT_NAMES, 0.0)
        self.stats_count = 0

    def forward(self, query: Tensor, key: Tensor | None = None, *, bias: Tensor | None = None,
                key_padding_mask: Tensor | None = None, **kwargs: object) -> Tensor:
        if key is not None and key is not query:
            raise ValueError("DSAAttention is self-attention only (class-attention blocks stay dense)")
        self._x = query  # the indexer scores from the block's normed input
        try:
            return super().forward(query, bias=bias, key_padding_mask=key_padding_mask, **kwargs)
        finally:
            self._x = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None,
               key_padding_mask: Tensor | None) -> Tensor:
        ctx = self.ctx or DSAContext(ratio=1.0, topk=None, collect=False)
        length = k.size(-2)
        n_real = (
            (~key_padding_mask).sum(-1)
            if key_padding_mask is not None
            else torch.full((k.size(0),), length, dtype=torch.long, device=k.device)
        )
        kb = keys_per_query(n_real, ratio=ctx.ratio, topk=ctx.topk)
        real_query = None if key_padding_mask is None else ~key_padding_mask
        if self.mode == "topk":
            return self._attend_topk(q, k, v, bias, key_padding_mask, kb, n_real, real_query, ctx)
        return self._attend_indexer(q, k, v, key_padding_mask, kb, n_real, real_query, ctx)

    def _dropout(self, weights: Tensor) -> Tensor:
        return F.dropout(weights, p=self.dropout) if self.training and self.dropout > 0 else weights

    def _record(self, ctx: DSAContext, real_query: Tensor | None, *, kept: Tensor, entropy: Tensor,
                mass: Tensor, distill: Tensor | None) -> None:
        """Store auxiliary terms (with gradient) in the context and add detached statistics to the running sums."""
        ctx.aux["sparsity"].append(1.0 - mass)
        ctx.aux["entropy"].append(entropy)
        if distill is not None:
            ctx.aux["distill"].append(distill)
        with torch.no_grad():
            self.stats_sum["kept_fraction"] += float(_masked_mean(kept, real_query))
            self.stats_sum["entropy"] += float(entropy)
            self.stats_sum["mass_kept"] += float(mass)
            self.stats_count += 1

    def _attend_topk(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, pad: Tensor | None, kb: Tensor,
                     n_real: Tensor, real_query: Tensor | None, ctx: DSAContext) -> Tensor:
        scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        keep = topk_keep_mask(scores, kb, pad)
        weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        if ctx.collect:
            dense = torch.softmax(scores, dim=-1)
            mass = _masked_mean((dense * keep).sum(-1), real_query)
            entropy = _masked_mean(_entropy(weights), real_query)
            kept = kb.to(q.dtype).view(-1, 1) / n_real.clamp(min=1).to(q.dtype).view(-1, 1)
            self._record(ctx, real_query, kept=kept.expand(-1, q.size(-2)), entropy=entropy, mass=mass, distill=None)
        return self._dropout(weights) @ v

    def blocks_per_query(self, kmax: int) -> int:
        """Blocks kept per query by the first selection stage (enough to hold 4 k keys, at least 8)."""
        return self.blocks if self.blocks is not None else max(8, -(-4 * kmax // self.block_size))

    def _select(
        self, pad: Tensor | None, kmax: int, collect: bool
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor], Tensor | None]:
        """Indexer top-k keys per query, chunked over queries.

        Returns idx (B, L, K), found (B, L, K) (False where fewer than K real keys were available), the indexer
        projections (q, k, w) and, when ``collect``, the log-sum-exp of the indexer scores over the keys scored
        (all keys, or the candidate blocks' keys in two-stage mode) for the mass-kept statistic.
        """
        x = self._x.detach()  # the indexer trains only through its own losses (as in DeepSeek-V3.2)
        iq, ik, iw = self.indexer.project(x)
        batch, heads, length, dim = iq.shape
        pad_or_none = pad if pad is not None and bool(pad.any()) else None
        nblocks, block = self.blocks_per_query(kmax), self.block_size
        two_stage = nblocks * block < length
        if two_stage:
            rows, missing = key_blocks(ik, pad_or_none, block)  # (B, nb, block * d), (B, nb, block)
            kmax_blk, kmin_blk, empty = block_key_bounds(rows, missing)
            offsets = torch.arange(block, device=ik.device)
            per_query = batch * (max(heads, dim) * nblocks * block + heads * kmax_blk.size(1))
        else:
            per_query = batch * heads * length
        chunk = max(1, min(length, _INDEXER_CHUNK_ELEMENTS // max(1, per_query)))
        idx_parts, found_parts, lse_parts = [], [], []
        for start in range(0, length, chunk):
            q, w = iq[:, :, start:start + chunk], iw[:, :, start:start + chunk]
            with torch.no_grad():
                if two_stage:
                    best = block_score_bound(q, w, kmax_blk, kmin_blk, empty).topk(nblocks, dim=-1).indices
                    cand_out = _gather_keys(missing, best).flatten(2)  # (B, c, nblocks * block)
                    top = _candidate_scores(q, rows, w, best, cand_out).topk(kmax, dim=-1)
                    cand = (best.unsqueeze(-1) * block + offsets).flatten(2).clamp(max=length - 1)
                    idx_parts.append(cand.gather(-1, top.indices))
                else:
                    top = _indexer_scores(q, ik, w, pad_or_none).topk(kmax, dim=-1)
                    idx_parts.append(top.indices)
                found_parts.append(torch.isfinite(top.values))
            if collect and two_stage:
                lse_parts.append(checkpoint(_candidate_lse, q, rows, w, best, cand_out, use_reentrant=False))
            elif collect:
                lse_parts.append(checkpoint(_indexer_lse, q, ik, w, pad, use_reentrant=False))
        lse = torch.cat(lse_parts, dim=1) if collect else None
        return torch.cat(idx_parts, dim=1), torch.cat(found_parts, dim=1), (iq, ik, iw), lse

    def _attend_indexer(self, q: Tensor, k: Tensor, v: Tensor, pad: Tensor | None, kb: Tensor, n_real: Tensor,
                        real_query: Tensor | None, ctx: DSAContext) -> Tensor:
        if self._x is None:
            raise RuntimeError("DSAAttention(mode='indexer').attend needs the block input: call the module itself")
        kmax = int(kb.max())
        idx, found, (iq, ik, iw), lse = self._select(pad, kmax, ctx.collect)
        rank = torch.arange(kmax, device=q.device).view(1, 1, -1)
        # the jet's own k keys, all real; the first is always kept (finite outputs even for an empty jet)
        valid = (rank < kb.view(-1, 1, 1)) & (found | (rank == 0))  # (B, L, K)
        q = q * (1.0 / math.sqrt(q.size(-1)))
        batch, heads, length, dim = q.shape
        # inference runs over query chunks so every gathered (chunk, K) tensor stays small (time linear in N);
        # a training forward is one chunk (its statistics and the pair BatchNorm need all queries at once)
        chunk = length if ctx.collect else max(1, _INDEXER_CHUNK_ELEMENTS // max(1, batch * heads * kmax * dim))
        outputs = []
        for start in range(0, length, chunk):
            rows = slice(start, start + chunk)
            k_sel = _gather_heads(k, idx[:, rows])  # (B, H, c, K, D)
            scores = (q[:, :, rows].unsqueeze(-2) @ k_sel.transpose(-1, -2)).squeeze(-2)  # (B, H, c, K)
            if ctx.pair_fn is not None:
                scores = scores + ctx.pair_fn(idx[:, rows], valid[:, rows], start)
            weights = torch.softmax(scores.masked_fill(~valid[:, None, rows], float("-inf")), dim=-1)
            if ctx.collect:
                self._record_indexer(ctx, weights, idx, valid, (iq, ik, iw), lse, kb, n_real, real_query)
            v_sel = _gather_heads(v, idx[:, rows])
            outputs.append((self._dropout(weights).unsqueeze(-2) @ v_sel).squeeze(-2))  # (B, H, c, D)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    def _record_indexer(self, ctx: DSAContext, weights: Tensor, idx: Tensor, valid: Tensor,
                        indexer: tuple[Tensor, Tensor, Tensor], lse: Tensor, kb: Tensor, n_real: Tensor,
                        real_query: Tensor | None) -> None:
        """Distillation KL (main attention -> indexer over the selected keys), mass kept, entropy of a forward."""
        iq, ik, iw = indexer
        i_sel = (F.relu(torch.einsum("bhld,blkd->bhlk", iq, _gather_keys(ik, idx))) * iw).sum(1)
        i_sel = i_sel.masked_fill(~valid, float("-inf"))
        log_p_index = torch.log_softmax(i_sel, dim=-1)
        target = weights.detach().mean(1)  # main attention over the selected keys, averaged over heads
        kl = (torch.special.xlogy(target, target) - target * log_p_index.masked_fill(~valid, 0.0)).sum(-1)
        scored = torch.isfinite(lse)  # False only for a jet without real particles
        mass = torch.exp(torch.logsumexp(i_sel, dim=-1) - torch.where(scored, lse, torch.zeros_like(lse)))
        mass = _masked_mean(mass.masked_fill(~scored, 1.0), real_query)
        kept = kb.to(weights.dtype).view(-1, 1) / n_real.clamp(min=1).to(weights.dtype).view(-1, 1)
        self._record(ctx, real_query, kept=kept.expand(-1, idx.size(1)),
                     entropy=_masked_mean(_entropy(weights), real_query), mass=mass,
                     distill=_masked_mean(kl, real_query))


def _gather_heads(x: Tensor, idx: Tensor) -> Tensor:
    """Per-head rows x (B, H, L, D) gathered at the same idx (B, Lq, K) for every head -> (B, H, Lq, K, D)."""
    batch, heads, length, dim = x.shape
    per_head = idx.unsqueeze(1).expand(-1, heads, -1, -1).reshape(batch * heads, *idx.shape[1:])
    return _gather_keys(x.reshape(batch * heads, length, dim), per_head).view(batch, heads, *idx.shape[1:], dim)


def selected_pair_bias(pair_embed: PairEmbed, v: Tensor, mask: Tensor, idx: Tensor, valid: Tensor,
                       start: int = 0) -> Tensor:
    """ParT's interaction bias for the selected pairs of queries start..start+Lq only: (B, H, Lq, K), zero elsewhere.

    Pair kinematics of (i, idx[i, r]) go through PairEmbed's BatchNorm/Conv1d stack as a per-pair MLP on the real
    selected pairs (as weaver's sparse path does for all real pairs), so memory is O(Lq x K).
    """
    batch, queries = idx.shape[:2]
    rows = slice(start, start + queries)
    vi = v[:, :, rows].unsqueeze(-1).expand(-1, -1, -1, idx.size(-1))  # (B, 4, Lq, K)
    vj = _gather_keys(v.transpose(1, 2), idx).permute(0, 3, 1, 2)  # (B, 4, Lq, K)
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


class DSAParticleTransformer(ParticleTransformer):
    """ParT whose chosen particle blocks use dynamic sparse attention; identical to ParT when DSA is off.

    Hooks into ParT's ``make_attention`` (which blocks are sparse), ``encode`` (schedule step; in indexer mode the
    dense N x N pair embedding is skipped) and ``run_blocks`` (hands the per-forward context to the sparse blocks).
    """

    def __init__(self, cfg: DSAConfig) -> None:
        super().__init__(cfg)
        self.aux_loss: Tensor | None = None
        self.aux_terms: dict[str, float] = {}
        self._ctx: DSAContext | None = None
        if cfg.dsa_enabled:
            # persistent: saved in weaver's checkpoints, so --load-epoch resumes the schedule where it stopped
            self.register_buffer("dsa_step", torch.zeros((), dtype=torch.long))

    def make_attention(self, index: int, *, cls_block: bool = False) -> MultiheadAttention | None:
        cfg = self.cfg
        if cls_block or index not in cfg.sparse_layers:
            return super().make_attention(index, cls_block=cls_block)
        return DSAAttention(cfg.embed_dim, cfg.num_heads, dropout=cfg.block_config().attn_dropout, mode=cfg.dsa_mode,
                            indexer_heads=cfg.indexer_heads, indexer_dim=cfg.indexer_dim,
                            block_size=cfg.indexer_block_size, blocks=cfg.indexer_blocks)

    def sparse_attentions(self) -> list[tuple[int, DSAAttention]]:
        """(block index, module) of every sparse attention."""
        return [(i, b.attn) for i, b in enumerate(self.blocks) if isinstance(b.attn, DSAAttention)]

    def current_kept_fraction(self) -> float:
        """The schedule's kept fraction at the stored training step."""
        return kept_fraction(self.cfg, int(self.dsa_step)) if self.cfg.dsa_enabled else 1.0

    def pop_aux_loss(self) -> Tensor | None:
        """The weighted auxiliary loss of the last training forward (then cleared so it is added once)."""
        loss, self.aux_loss = self.aux_loss, None
        return loss

    @property
    def _pairs_only_lazy(self) -> bool:
        """Indexer mode with every block sparse: no dense pair bias is needed at all."""
        cfg = self.cfg
        return cfg.dsa_mode == "indexer" and len(cfg.sparse_layers) == cfg.num_layers and self.pair_embed is not None

    def encode(
        self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None, uu: Tensor | None = None,
        uu_idx: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        cfg = self.cfg
        if not cfg.dsa_enabled:
            return super().encode(x, v, mask, uu, uu_idx)
        if cfg.dsa_mode == "indexer" and (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            raise RuntimeError("DSA dsa_mode='indexer' cannot be exported (data-dependent k); export with 'topk'")
        collect = self.training and torch.is_grad_enabled()
        self._ctx = DSAContext(ratio=self.current_kept_fraction(), topk=cfg.topk, collect=collect)
        if self.training:
            self.dsa_step.add_(1)
        try:
            out = super().encode(x, v, mask, uu, uu_idx)
        finally:
            ctx, self._ctx = self._ctx, None
        self._store_aux(ctx)
        return out

    def pair_bias(self, v: Tensor | None, uu: Tensor | None, mask: Tensor) -> Tensor | None:
        """No dense bias when every block is sparse in indexer mode: pairs are embedded per selected (i, j)."""
        if self.cfg.dsa_enabled and self._pairs_only_lazy:
            return None
        return super().pair_bias(v, uu, mask)

    @property
    def supports_fast_inference(self) -> bool:
        return not self.cfg.dsa_enabled

    def run_blocks(self, x: Tensor, v: Tensor | None, mask: Tensor, padding_mask: Tensor,
                   bias: Tensor | None) -> Tensor:
        ctx = self._ctx
        if ctx is None:
            return super().run_blocks(x, v, mask, padding_mask, bias)
        if self.cfg.dsa_mode == "indexer" and v is not None:
            pair_embed = self.pair_embed
            if pair_embed is not None:
                def pair_fn(idx: Tensor, valid: Tensor, start: int) -> Tensor:
                    return selected_pair_bias(pair_embed, v, mask, idx, valid, start)
                ctx.pair_fn = pair_fn
        sparse = self.sparse_attentions()
        for _, attn in sparse:
            attn.ctx = ctx
        try:
            return super().run_blocks(x, v, mask, padding_mask, bias)
        finally:
            for _, attn in sparse:
                attn.ctx = None

    def _store_aux(self, ctx: DSAContext) -> None:
        if not ctx.collect:
            self.aux_loss = None
            return
        weights = {"sparsity": self.cfg.sparsity_weight, "entropy": self.cfg.entropy_weight,
                   "distill": self.cfg.distill_weight}
        total: Tensor | None = None
        self.aux_terms = {}
        for name in AUX_NAMES:
            terms = ctx.aux[name]
            if not terms:
                continue
            mean = torch.stack(terms).mean()  # mean over sparse layers
            self.aux_terms[name] = float(mean.detach())
            if weights[name] > 0:
                total = weights[name] * mean if total is None else total + weights[name] * mean
        self.aux_loss = total

    def epoch_stats(self, *, reset: bool = True) -> dict[int, dict[str, float]]:
        """Mean statistics per sparse layer over the training forwards since the last reset."""
        out: dict[int, dict[str, float]] = {}
        for i, attn in self.sparse_attentions():
            if attn.stats_count:
                out[i] = {k: s / attn.stats_count for k, s in attn.stats_sum.items()}
            if reset:
                attn.reset_stats()
        return out
