"""Attention cores: ``softmax(q k^T * scale + bias) v`` computed by interchangeable backends.

Every core has the same keyword-only signature and receives already-resolved inputs:
``q, k, v``: (batch, heads, length, head_dim); ``bias``: additive float (batch, heads, Lq, Lk) or None;
``key_padding_mask``: bool (batch, Lk), True = padded key, or None. The ``math`` core is the reference every other
backend is tested against. ``BACKENDS`` is the capability table: what each core supports and where it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .dropout import dropout

__all__ = [
    "BACKENDS",
    "BackendInfo",
    "bmm_attention",
    "capability_table",
    "check_backend",
    "flash_attention_core",
    "flex_attention_core",
    "get_backend",
    "grouped_attention",
    "math_attention",
    "merge_bias_and_mask",
    "register_backend",
    "sdpa_attention",
]

Tensor = torch.Tensor
AttentionCore = Callable[..., Tensor]


@dataclass(frozen=True)
class BackendInfo:
    """Capabilities of one attention core."""

    core: AttentionCore
    bias: bool  # additive pair bias (ParT's interaction matrix)
    padding_mask: bool
    training: bool  # supports autograd (on the devices it runs on)
    cpu: bool
    cuda: bool
    note: str = ""
    cpu_training: bool = True  # False: autograd only on CUDA (flex attention has no CPU backward)


def merge_bias_and_mask(bias: Tensor | None, key_padding_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """One additive float mask, in ``dtype``, from the pair bias and the key padding mask (-inf on padded keys).

    The mask must have the query's dtype: CUDA's fused kernels reject another (memory-efficient) or, with cuDNN
    attention in torch 2.11, return NaN for an fp32 mask on bf16 queries (measured on an H200)."""
    if bias is not None:
        bias = bias.to(dtype)
    if key_padding_mask is None:
        return bias
    pad = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    pad = pad.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]  # (B, 1, 1, Lk)
    return pad if bias is None else bias + pad


def math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Reference implementation: explicit scores, softmax and weighted sum."""
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    mask = merge_bias_and_mask(bias, key_padding_mask, scores.dtype)
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = dropout(weights, dropout_p)
    return weights @ v


def _bmm_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, dropout_p: float, scale: float | None,
                   safe: bool = False) -> Tensor:
    """``math_attention`` as three batched matmul-like steps on an already merged float ``mask``: the scores as
    ``mask + scale q k^T`` in one ``baddbmm``, the softmax accumulated and returned in fp32 (then cast to the values'
    dtype), the weighted sum in one ``bmm``.

    ``safe``: some query may have every key masked (an empty jet). Such a query then gets zero weights instead of NaN
    (as the softmax of torch's SDPA math kernel), while NaN or inf scores from bad inputs still give NaN. It costs a
    pass over the scores, so it runs only when needed."""
    batch, heads, len_q, dim = q.shape
    len_k = k.size(2)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    q3, k3 = q.reshape(batch * heads, len_q, dim), k.reshape(batch * heads, len_k, dim).transpose(1, 2)
    if mask is None:
        scores = torch.bmm(q3, k3).mul_(scale)
    else:
        scores = torch.baddbmm(mask.expand(batch, heads, len_q, len_k).reshape(batch * heads, len_q, len_k), q3, k3,
                               alpha=scale)
    weights = torch.softmax(scores, -1, dtype=torch.float32)
    if safe:  # rows with every key at -inf: zeros (torch._safe_softmax, spelt out so that dynamo traces it)
        weights = weights.masked_fill(torch.isneginf(scores).all(-1, keepdim=True), 0.0)
    weights = dropout(weights.to(v.dtype), dropout_p)
    return torch.bmm(weights, v.reshape(batch * heads, len_k, -1)).view(batch, heads, len_q, -1)


def bmm_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Explicit batched matmuls (``_bmm_attention``): on CPU at ParT's sizes (head dim 16, under 128 particles) this
    runs 2-3x faster than torch's fused SDPA kernel, and in bf16 its fp32 softmax avoids torch's slow bf16 softmax
    (docs/benchmarks.md). Jets without particles get zero attention output, as with ``sdpa``. Under
    ``torch.compile`` a padding mask always takes the safe softmax: checking for empty jets would break the graph."""
    empty = key_padding_mask is not None and (torch.compiler.is_compiling()
                                              or bool(key_padding_mask.all(-1).any()))
    return _bmm_attention(q, k, v, merge_bias_and_mask(bias, key_padding_mask, q.dtype), dropout_p=dropout_p,
                          scale=scale, safe=empty)


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """torch's fused ``scaled_dot_product_attention`` with the pair bias and padding merged into one float mask."""
    if dropout_p > 0 and q.device.type == "cpu" and not torch.compiler.is_compiling():
        # torch's SDPA runs its math kernel for dropout on CPU anyway; this one drops with the cheaper dropout
        return bmm_attention(q, k, v, bias=bias, key_padding_mask=key_padding_mask, dropout_p=dropout_p, scale=scale)
    mask = merge_bias_and_mask(bias, key_padding_mask, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def _bias_and_padding_score_mod(bias: Tensor | None, key_padding_mask: Tensor | None) -> Callable | None:
    """flex_attention ``score_mod`` adding the pair bias and -inf on padded keys (None when there is neither)."""
    if bias is None and key_padding_mask is None:
        return None
    if key_padding_mask is None:
        return lambda score, b, h, q_idx, k_idx: score + bias[b, h, q_idx, k_idx]
    neg_inf = torch.tensor(float("-inf"), device=key_padding_mask.device)
    if bias is None:
        return lambda score, b, h, q_idx, k_idx: torch.where(key_padding_mask[b, k_idx], neg_inf, score)
    return lambda score, b, h, q_idx, k_idx: torch.where(
        key_padding_mask[b, k_idx], neg_inf, score + bias[b, h, q_idx, k_idx]
    )


def flex_attention_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """torch's FlexAttention: the pair bias and the padding are one ``score_mod`` (no (B, H, L, L) mask tensor).

    Without ``torch.compile`` torch runs it unfused (it warns once); on CPU it has no backward.
    """
    from torch.nn.attention.flex_attention import flex_attention

    if dropout_p > 0:
        raise ValueError("attention backend 'flex' has no attention dropout; set attn_dropout=0 to train with it")
    score_mod = _bias_and_padding_score_mod(bias, key_padding_mask)
    return flex_attention(q, k, v, score_mod=score_mod, scale=scale)


def flash_attention_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Flash attention through ``torch.nn.attention.varlen.varlen_attn`` (CUDA only, no additive bias).

    Padding: the real keys of each jet are packed into one ragged sequence (``cu_seq_k``); all queries are kept,
    so padded query rows get the same values as in ``math``. fp32 inputs run in bf16 (flash kernels need 16-bit).
    """
    from torch.nn.attention.varlen import varlen_attn

    if bias is not None:
        raise ValueError("attention backend 'flash' does not support an additive pair bias")
    if dropout_p > 0:
        raise ValueError("attention backend 'flash' has no attention dropout; set attn_dropout=0 to train with it")
    batch, heads, len_q, dim = q.shape
    len_k = k.size(2)
    out_dtype = q.dtype
    run_dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    keep = torch.ones(batch, len_k, dtype=torch.bool, device=q.device) if key_padding_mask is None \
        else ~key_padding_mask
    q_packed = q.transpose(1, 2).reshape(batch * len_q, heads, dim).to(run_dtype)
    k_packed = k.transpose(1, 2)[keep].to(run_dtype)  # (total real keys, H, D)
    v_packed = v.transpose(1, 2)[keep].to(run_dtype)
    zero = torch.zeros(1, dtype=torch.int32, device=q.device)
    cu_q = torch.arange(0, (batch + 1) * len_q, len_q, dtype=torch.int32, device=q.device)
    cu_k = torch.cat((zero, keep.sum(dim=1).cumsum(0).to(torch.int32)))
    out = varlen_attn(q_packed, k_packed, v_packed, cu_q, cu_k, len_q, len_k, scale=scale)
    return out.view(batch, len_q, heads, dim).transpose(1, 2).to(out_dtype)


def grouped_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: object = None,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Attention per group of jets in the packed layout: the whole batch is one (1, H, T, D) sequence, and ``bias``
    (``grouped.PairGroups`` or ``grouped.ClassGroups``) says where each jet is. Only the packed fast inference path
    builds such a bias (``grouped.py``, ``packed.py``)."""
    from .grouped import grouped_attention as attend  # imports this module (its bmm loop is the fallback)

    return attend(q, k, v, bias=bias, key_padding_mask=key_padding_mask, dropout_p=dropout_p, scale=scale)


BACKENDS: dict[str, BackendInfo] = {
    "math": BackendInfo(math_attention, bias=True, padding_mask=True, training=True, cpu=True, cuda=True,
                        note="reference; materialises the (B, H, L, L) score matrix"),
    "sdpa": BackendInfo(sdpa_attention, bias=True, padding_mask=True, training=True, cpu=True, cuda=True,
                        note="torch SDPA; with a float bias it uses the memory-efficient or math kernel"),
    "bmm": BackendInfo(bmm_attention, bias=True, padding_mask=True, training=True, cpu=True, cuda=True,
                       note="explicit baddbmm, fp32 softmax, bmm; the fast CPU inference path's default"),
    "flex": BackendInfo(flex_attention_core, bias=True, padding_mask=True, training=True, cpu=True, cuda=True,
                        cpu_training=False,
                        note="torch FlexAttention, bias + padding as score_mod; no dropout; CPU: inference only, "
                        "unfused without torch.compile"),
    "flash": BackendInfo(flash_attention_core, bias=False, padding_mask=True, training=True, cpu=False, cuda=True,
                         note="flash varlen_attn (real keys packed per jet); no pair bias, no dropout; "
                         "runs in bf16/fp16"),
    "grouped": BackendInfo(grouped_attention, bias=True, padding_mask=True, training=False, cpu=True, cuda=True,
                           note="per jet of the packed token sequence: a fused C++ kernel in fp32 on CPU, bmm per "
                           "group otherwise; the packed fast inference path only"),
}


def register_backend(name: str, info: BackendInfo) -> None:
    """Add an attention core to the table (used by optional backends such as flex and flash)."""
    BACKENDS[name] = info


def get_backend(name: str) -> BackendInfo:
    """Look up a backend by name; unknown names fail with the list of valid ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; available: {', '.join(BACKENDS)}") from None


def check_backend(name: str, *, has_bias: bool, has_mask: bool, training: bool, device: torch.device) -> None:
    """Raise a one-line error when a backend cannot run the requested attention."""
    info = get_backend(name)
    if has_bias and not info.bias:
        raise ValueError(f"attention backend {name!r} does not support an additive pair bias ({info.note})")
    if has_mask and not info.padding_mask:
        raise ValueError(f"attention backend {name!r} does not support padding masks ({info.note})")
    if training and not info.training:
        raise ValueError(f"attention backend {name!r} is inference-only ({info.note}); use 'sdpa' or 'math' to train")
    on_cuda = device.type == "cuda"
    if training and not on_cuda and not info.cpu_training:
        raise ValueError(
            f"attention backend {name!r} is inference-only on CPU (no CPU backward); train with 'sdpa' or 'math' "
            "and switch with set_attention_backend for evaluation"
        )
    if (on_cuda and not info.cuda) or (not on_cuda and not info.cpu):
        raise ValueError(f"attention backend {name!r} does not run on {device.type} ({info.note})")


def capability_table() -> str:
    """Markdown table of the registered backends (used in docs and ``--help`` output)."""
    rows = ["| backend | pair bias | padding mask | training | CPU | CUDA | note |", "|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for name, b in BACKENDS.items():
        train = "CUDA only" if b.training and not b.cpu_training else yes[b.training]
        rows.append(
            f"| {name} | {yes[b.bias]} | {yes[b.padding_mask]} | {train} | {yes[b.cpu]} | {yes[b.cuda]} "
            f"| {b.note} |"
        )
    return "\n".join(rows)
