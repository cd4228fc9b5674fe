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


def merge_bias_and_mask(bias: Tensor | None, key_padding_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """One additive float mask from the pair bias and the key padding mask (-inf on padded keys)."""
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
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


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
    mask = merge_bias_and_mask(bias, key_padding_mask, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


BACKENDS: dict[str, BackendInfo] = {
    "math": BackendInfo(math_attention, bias=True, padding_mask=True, training=True, cpu=True, cuda=True,
                        note="reference; materialises the (B, H, L, L) score matrix"),
    "sdpa": BackendInfo(sdpa_attention, bias=True, padding_mask=True, training=True, cpu=True, cuda=True,
                        note="torch SDPA; with a float bias it uses the memory-efficient or math kernel"),
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
    if (on_cuda and not info.cuda) or (not on_cuda and not info.cpu):
        raise ValueError(f"attention backend {name!r} does not run on {device.type} ({info.note})")


def capability_table() -> str:
    """Markdown table of the registered backends (used in docs and ``--help`` output)."""
    rows = ["| backend | pair bias | padding mask | training | CPU | CUDA | note |", "|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for name, b in BACKENDS.items():
        rows.append(
            f"| {name} | {yes[b.bias]} | {yes[b.padding_mask]} | {yes[b.training]} | {yes[b.cpu]} | {yes[b.cuda]} "
            f"| {b.note} |"
        )
    return "\n".join(rows)
