"""DSA's lightning indexer and its key selection: which k keys each query attends to, in O(N x k) memory.

The indexer (a few low-dimensional ReLU heads, as DeepSeek-V3.2's lightning indexer) scores query-key pairs cheaply.
For long inputs the selection has two stages so that it does not score all N x N pairs either: keys are cut into
contiguous blocks of ``block_size``; each query scores every block by an upper bound of the indexer score of any
key inside it (per-dimension min/max of the block's indexer keys, as in Quest) and only the keys of its best
``blocks`` blocks are scored exactly: O(N x (N / block + blocks x block)) instead of O(N^2). When those blocks would
cover every key the exhaustive single-stage selection is used (identical result, less work).

Optional angular prior (``indexer_prior='angle'``): score(i, j) += beta(i) u(i).u(j), with u the unit direction of
the particle's momentum (jets) or of the hit PMT (tracks) and beta(i) = softplus(linear(x_i)) > 0, starting at
``PRIOR_INIT``. A fresh indexer then selects each query's angular neighbours (ParT's pair features make those the
keys dense attention weights most) instead of random keys, and distillation learns how much the prior counts.

Optional pair prior (``indexer_prior='pair'``, short inputs such as jets): score(i, j) += sum_h c_h(i) U_h(i, j),
with U ParT's dense pair bias (detached) and c(i) = linear(x_i), starting at the mean over heads. The indexer then
sees the pair features (ln kT, ln z, ln dR, ln m^2) that shape dense attention. U is N x N, so this prior needs the
exhaustive selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "LightningIndexer",
    "Selection",
    "break_ties",
    "block_key_bounds",
    "block_score_bound",
    "gather_keys",
    "gather_pair_bias",
    "indexer_scores",
    "key_blocks",
    "pair_prior_scores",
    "select_keys",
]

Tensor = torch.Tensor

INDEXER_CHUNK_ELEMENTS = 1 << 20  # indexer scores held at once: B x heads x chunk x N <= 1M floats
PRIOR_INIT = 4.0  # beta at initialisation: cosines of neighbouring keys differ by O(0.1), ReLU scores by O(0.01)
TIE_STEP = 1e-30  # per key index: orders exact ties (ReLU zeros) by index, too small to move any non-zero fp32 score


def break_ties(scores: Tensor, key_index: Tensor) -> Tensor:
    """Scores minus ``TIE_STEP`` x key index, in place: exact ties (keys whose ReLU scores are all zero, common for
    a young indexer) go to the lowest index instead of wherever ``topk`` happens to put them, so the selection does
    not depend on the batch's padding or composition. Any non-zero fp32 score is unchanged (|s| >> 2048e-30)."""
    return scores.sub_(key_index.to(scores.dtype) * TIE_STEP)


class LightningIndexer(nn.Module):
    """Cheap key scorer: score(i, j) = sum_h w_h(i) * ReLU(q_h(i) . k(j)) with few, low-dimensional heads."""

    def __init__(self, embed_dim: int, *, heads: int, dim: int, prior: bool = False, pair_heads: int = 0) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.q_proj = nn.Linear(embed_dim, heads * dim)
        self.k_proj = nn.Linear(embed_dim, dim)
        self.w_proj = nn.Linear(embed_dim, heads)
        for lin in (self.q_proj, self.k_proj, self.w_proj):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.prior_proj = nn.Linear(embed_dim, 1) if prior else None  # beta(i) of the angular prior
        self.pair_proj = nn.Linear(embed_dim, pair_heads) if pair_heads else None  # c(i) of the pair prior
        self.init_priors()

    def init_priors(self) -> None:
        """The priors' starting point: beta = ``PRIOR_INIT`` and c = the mean over heads, for every token. A model's
        ``weight_init`` re-initialises every Linear, so the model calls this again after it (ParticleTransformer)."""
        if self.prior_proj is not None:
            nn.init.zeros_(self.prior_proj.weight)
            nn.init.constant_(self.prior_proj.bias, math.log(math.expm1(PRIOR_INIT)))
        if self.pair_proj is not None:
            nn.init.zeros_(self.pair_proj.weight)
            nn.init.constant_(self.pair_proj.bias, 1.0 / self.pair_proj.out_features)

    def pair_terms(self, x: Tensor, pair_bias: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The pair prior's (c(i) (B, L, H), U detached (B, H, L, L)); None without one."""
        if self.pair_proj is None:
            return None
        if pair_bias is None or pair_bias.shape[0] != x.shape[0] or pair_bias.shape[1] != self.pair_proj.out_features \
                or pair_bias.shape[-2:] != (x.size(1), x.size(1)):
            raise ValueError("DSA option indexer_prior='pair' needs ParT's pair features (pf_vectors), one per token")
        return self.pair_proj(x), pair_bias.detach().to(x.dtype)

    def prior_terms(self, x: Tensor, directions: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The angular prior as a low-rank score term (beta(i) u(i), u(j)), both (B, L, 3); None without one."""
        if self.prior_proj is None:
            return None
        if directions is None or directions.shape[:2] != x.shape[:2]:
            raise ValueError("DSA option indexer_prior='angle' needs the particle four-vectors (pf_vectors / "
                             "hit_points), one per token")
        directions = directions.to(x.dtype)
        return F.softplus(self.prior_proj(x)) * directions, directions

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, L, E) -> q (B, h, L, d), k (B, L, d), w (B, h, L, 1)."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.dim).transpose(1, 2) / math.sqrt(self.dim)
        w = self.w_proj(x).transpose(1, 2).unsqueeze(-1) / math.sqrt(self.heads)
        return q, self.k_proj(x), w


def gather_pair_bias(pair_bias: Tensor, idx: Tensor) -> Tensor:
    """A dense pair bias (B, H, c, N) of a query chunk at each query's keys idx (B, c, K): (B, H, c, K)."""
    return pair_bias.gather(-1, idx.unsqueeze(1).expand(-1, pair_bias.size(1), -1, -1))


def pair_prior_scores(coeff: Tensor, pair_bias: Tensor, idx: Tensor | None = None) -> Tensor:
    """sum_h c_h(i) U_h(i, j) for a query chunk: coeff (B, c, H), U (B, H, c, N) -> (B, c, N); with ``idx``
    (B, c, K) only at the keys idx -> (B, c, K)."""
    if idx is not None:
        pair_bias = gather_pair_bias(pair_bias, idx)
    return torch.einsum("bch,bhck->bck", coeff, pair_bias)


def indexer_scores(q: Tensor, k: Tensor, w: Tensor, pad: Tensor | None,
                   prior: tuple[Tensor, Tensor] | None = None, pair: Tensor | None = None) -> Tensor:
    """Indexer scores of a query chunk against all keys: (B, c, N), -inf on padded keys.

    q (B, h, c, d) is flattened to one (h*c, d) x (d, N) matmul per jet (no per-head copy of k); without autograd
    the ReLU, head weights and padding mask are applied in place (this is the only O(N^2) work of indexer mode).
    ``prior``: the angular prior's (query chunk (B, c, r), keys (B, N, r)), added as one more matmul; ``pair``:
    the pair prior's scores of the chunk (B, c, N) (``pair_prior_scores``).
    """
    batch, heads, chunk, dim = q.shape
    s = torch.bmm(q.reshape(batch, heads * chunk, dim), k.transpose(1, 2)).view(batch, heads, chunk, -1)
    if torch.is_grad_enabled():
        s = (F.relu(s) * w).sum(1)
        if prior is not None:
            s = s + torch.bmm(prior[0], prior[1].transpose(1, 2))
        if pair is not None:
            s = s + pair
    else:
        s = s.relu_().mul_(w)
        s = s[:, 0] if heads == 1 else s.sum(1)
        if prior is not None:  # (autocast may give the matmul another dtype than s)
            s = s.add_(torch.bmm(prior[0], prior[1].transpose(1, 2)).to(s.dtype))
        if pair is not None:
            s = s.add_(pair.to(s.dtype))
    return s if pad is None else s.masked_fill_(pad[:, None, :], float("-inf"))


def _indexer_lse(q: Tensor, k: Tensor, w: Tensor, pad: Tensor | None, pq: Tensor | None,
                 pk: Tensor | None, pair: Tensor | None = None) -> Tensor:
    return torch.logsumexp(indexer_scores(q, k, w, pad, None if pq is None else (pq, pk), pair), dim=-1)


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


def block_score_bound(q: Tensor, w: Tensor, kmax: Tensor, kmin: Tensor, empty: Tensor,
                      prior: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Upper bound of the indexer score of every key of each block: q (B, h, c, d) -> (B, c, nb), -inf if empty.

    Per head, q.k over a block lies in [q+.kmin + q-.kmax, q+.kmax + q-.kmin] (q+ = max(q, 0), q- = min(q, 0));
    ReLU is monotonic, so w_h ReLU(upper) bounds a head with w_h >= 0 and w_h ReLU(lower) one with w_h < 0.
    ``prior`` (query chunk (B, c, r), block max and min of the prior keys (B, nb, r)) adds the same linear bound.
    """
    qp, qn = q.clamp(min=0), q.clamp(max=0)
    kmax_t, kmin_t = kmax.transpose(1, 2).unsqueeze(1), kmin.transpose(1, 2).unsqueeze(1)  # (B, 1, d, nb)
    upper = qp @ kmax_t + qn @ kmin_t
    lower = qp @ kmin_t + qn @ kmax_t
    bound = torch.where(w >= 0, w * upper.relu(), w * lower.relu()).sum(1)
    if prior is not None:
        pq, pmax, pmin = prior
        bound = bound + pq.clamp(min=0) @ pmax.transpose(1, 2) + pq.clamp(max=0) @ pmin.transpose(1, 2)
    return bound.masked_fill(empty[:, None, :], float("-inf"))


def _blocked(x: Tensor, block: int, fill: float | bool) -> Tensor:
    """x (B, N, ...) padded with ``fill`` to whole blocks and viewed as (B, nb, block * ...): one row per block."""
    extra = -x.size(1) % block
    if extra:
        x = torch.cat((x, x.new_full((x.size(0), extra, *x.shape[2:]), fill)), dim=1)
    return x.reshape(x.size(0), x.size(1) // block, -1)


def _candidate_scores(q: Tensor, rows: Tensor, w: Tensor, best: Tensor, cand_out: Tensor,
                      prior: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Exact indexer scores of the keys of each query's chosen blocks best (B, c, m): (B, c, m * block).

    Whole blocks are gathered as ``rows`` (B, nb, block * d) of ``key_blocks``, much cheaper than gathering
    m * block single keys; -inf where ``cand_out`` (padding, or past the last key). ``prior``: (query chunk
    (B, c, r), blocked prior keys (B, nb, block * r)).
    """
    batch, chunk, _ = best.shape
    keys = gather_keys(rows, best).view(batch, chunk, -1, q.size(-1))  # (B, c, m * block, d)
    s = q.transpose(1, 2) @ keys.transpose(-1, -2)  # (B, c, h, m * block)
    s = (F.relu(s) * w.transpose(1, 2)).sum(2)
    if prior is not None:
        pq, prior_rows = prior
        prior_keys = gather_keys(prior_rows, best).view(batch, chunk, -1, pq.size(-1))  # (B, c, m * block, r)
        s = s + (pq.unsqueeze(-2) @ prior_keys.transpose(-1, -2)).squeeze(-2)
    return s.masked_fill(cand_out, float("-inf"))


def _candidate_lse(q: Tensor, rows: Tensor, w: Tensor, best: Tensor, cand_out: Tensor, pq: Tensor | None,
                   prior_rows: Tensor | None) -> Tensor:
    prior = None if pq is None else (pq, prior_rows)
    return torch.logsumexp(_candidate_scores(q, rows, w, best, cand_out, prior), dim=-1)


def gather_keys(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, L, ...) gathered at idx (B, Lq, K) -> (B, Lq, K, ...).

    One ``index_select`` on the flattened batch: several times faster on CPU than advanced indexing ``x[b, idx]``.
    """
    batch, length = x.shape[:2]
    offsets = (torch.arange(batch, device=x.device) * length).view(-1, *([1] * (idx.dim() - 1)))
    rows = x.reshape(batch * length, *x.shape[2:]).index_select(0, (idx + offsets).reshape(-1))
    return rows.view(*idx.shape, *x.shape[2:])


@dataclass
class Selection:
    """The keys each query attends to: idx (B, L, K), found (B, L, K) (False where fewer than K real keys were
    available), the indexer projections (q, k, w) and, when collected, the log-sum-exp of the indexer scores over
    the keys scored (all keys, or the candidate blocks' keys in two-stage mode) for the mass-kept statistic;
    ``prior``: the angular prior's (beta(i) u(i), u(j)) and ``pair`` the pair prior's (c(i), U) when the indexer
    has one."""

    idx: Tensor
    found: Tensor
    projections: tuple[Tensor, Tensor, Tensor]
    lse: Tensor | None
    prior: tuple[Tensor, Tensor] | None = None
    pair: tuple[Tensor, Tensor] | None = None

    def scores_of(self, idx: Tensor) -> Tensor:
        """Indexer scores (with autograd) of the keys idx (B, L, K) of every query: (B, L, K)."""
        iq, ik, iw = self.projections
        scores = (F.relu(torch.einsum("bhld,blkd->bhlk", iq, gather_keys(ik, idx))) * iw).sum(1)
        if self.prior is not None:
            pq, pk = self.prior
            scores = scores + torch.einsum("blr,blkr->blk", pq, gather_keys(pk, idx))
        if self.pair is not None:
            scores = scores + pair_prior_scores(*self.pair, idx)
        return scores


def blocks_per_query(kmax: int, *, block_size: int, blocks: int | None) -> int:
    """Blocks kept per query by the first selection stage: ``blocks``, or enough to hold 4 k keys and at least 8;
    never fewer than hold k keys (a small ``indexer_blocks`` with a large k would leave too few candidates)."""
    chosen = blocks if blocks is not None else max(8, -(-4 * kmax // block_size))
    return max(chosen, -(-kmax // block_size))


def select_keys(indexer: LightningIndexer, x: Tensor, pad: Tensor | None, kmax: int, *, block_size: int = 64,
                blocks: int | None = None, collect: bool = False, directions: Tensor | None = None,
                pair_bias: Tensor | None = None) -> Selection:
    """The indexer's top-``kmax`` keys per query of x (B, L, E) (the block's normed input), chunked over queries.

    ``x`` is detached: the indexer trains only through its own losses (as in DeepSeek-V3.2). ``directions``
    (B, L, 3): unit vectors for the angular prior; ``pair_bias`` (B, H, L, L): ParT's dense pair bias for the pair
    prior (each required when the indexer has that prior).
    """
    iq, ik, iw = indexer.project(x.detach())
    prior = indexer.prior_terms(x.detach(), directions)
    pair = indexer.pair_terms(x.detach(), pair_bias)
    batch, heads, length, dim = iq.shape
    pad_or_none = pad if pad is not None and bool(pad.any()) else None
    nblocks = blocks_per_query(kmax, block_size=block_size, blocks=blocks)
    two_stage = nblocks * block_size < length
    if two_stage and pair is not None:
        raise ValueError(f"DSA option indexer_prior='pair' needs the exhaustive selection: {length} keys is more "
                         f"than indexer_blocks x indexer_block_size = {nblocks * block_size}")
    if two_stage:
        rows, missing = key_blocks(ik, pad_or_none, block_size)  # (B, nb, block * d), (B, nb, block)
        bounds = block_key_bounds(rows, missing)
        prior_rows = None if prior is None else key_blocks(prior[1], pad_or_none, block_size)[0]
        prior_bounds = None if prior_rows is None else block_key_bounds(prior_rows, missing)[:2]
        per_query = batch * (max(heads, dim) * nblocks * block_size + heads * rows.size(1))
    else:
        per_query = batch * heads * length
    chunk = max(1, min(length, INDEXER_CHUNK_ELEMENTS // max(1, per_query)))
    idx_parts, found_parts, lse_parts = [], [], []
    for start in range(0, length, chunk):
        q, w = iq[:, :, start:start + chunk], iw[:, :, start:start + chunk]
        pq = None if prior is None else prior[0][:, start:start + chunk]
        if two_stage:
            chunk_prior = None if pq is None else (pq, prior_rows, *prior_bounds)
            idx, found, lse = _select_two_stage(q, w, rows, missing, bounds, kmax, nblocks, length, collect,
                                                chunk_prior)
        else:
            chunk_prior = None if pq is None else (pq, prior[1])
            chunk_pair = None if pair is None else \
                pair_prior_scores(pair[0][:, start:start + chunk], pair[1][:, :, start:start + chunk])
            idx, found, lse = _select_exhaustive(q, ik, w, pad, pad_or_none, kmax, collect, chunk_prior, chunk_pair)
        idx_parts.append(idx)
        found_parts.append(found)
        lse_parts.append(lse)
    lse = torch.cat(lse_parts, dim=1) if collect else None
    return Selection(torch.cat(idx_parts, dim=1), torch.cat(found_parts, dim=1), (iq, ik, iw), lse, prior, pair)


def _select_exhaustive(q: Tensor, ik: Tensor, w: Tensor, pad: Tensor | None, pad_or_none: Tensor | None, kmax: int,
                       collect: bool, prior: tuple[Tensor, Tensor] | None,
                       pair: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One query chunk scored against every key (``prior``: the chunk's prior queries and all prior keys; ``pair``:
    the chunk's pair-prior scores (B, c, N))."""
    with torch.no_grad():
        scores = indexer_scores(q, ik, w, pad_or_none, prior, None if pair is None else pair.detach())
        top = break_ties(scores, torch.arange(scores.size(-1), device=scores.device)).topk(kmax, dim=-1)
    pq, pk = (None, None) if prior is None else prior
    lse = checkpoint(_indexer_lse, q, ik, w, pad, pq, pk, pair, use_reentrant=False) if collect else None
    return top.indices, torch.isfinite(top.values), lse


def _select_two_stage(q: Tensor, w: Tensor, rows: Tensor, missing: Tensor, bounds: tuple[Tensor, Tensor, Tensor],
                      kmax: int, nblocks: int, length: int, collect: bool,
                      prior: tuple[Tensor, Tensor, Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One query chunk: best blocks by the score bound, then exact scores of their keys (``prior``: the chunk's
    prior queries, the blocked prior keys and their block max and min)."""
    block = missing.size(-1)
    pq, prior_rows = (None, None) if prior is None else prior[:2]
    with torch.no_grad():
        bound_prior = None if prior is None else (pq, prior[2], prior[3])
        best = block_score_bound(q, w, *bounds, prior=bound_prior).topk(nblocks, dim=-1).indices
        cand_out = gather_keys(missing, best).flatten(2)  # (B, c, nblocks * block)
        offsets = torch.arange(block, device=q.device)
        cand = (best.unsqueeze(-1) * block + offsets).flatten(2).clamp(max=length - 1)
        exact = _candidate_scores(q, rows, w, best, cand_out, None if pq is None else (pq, prior_rows))
        top = break_ties(exact, cand).topk(kmax, dim=-1)
        idx = cand.gather(-1, top.indices)
    lse = checkpoint(_candidate_lse, q, rows, w, best, cand_out, pq, prior_rows, use_reentrant=False) \
        if collect else None
    return idx, torch.isfinite(top.values), lse
