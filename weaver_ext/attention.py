"""One multi-head attention skeleton (projections, value residual) around a pluggable *core*.

The skeleton projects to per-head q, k, v and back; the core (one per attention kind, see ``attention_kinds.py``)
turns q, k, v into the per-head outputs: dense softmax through a backend, differential maps, DSA top-k or indexer
selection. Parameter names (``in_proj``, ``out_proj``) match weaver-core's ``Attention`` so its checkpoints load
unchanged; a core's own parameters live under ``core.`` (``legacy_core_keys`` maps older checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .backends import check_backend, get_backend
from .context import ForwardContext, ValueResidual
from .maps import SoftmaxMaps
from .norms import NormKind, make_norm

__all__ = [
    "AttentionCore",
    "MultiheadAttention",
    "DenseCore",
    "LayerSpec",
    "attention_score_flops",
    "set_attention_backend",
    "upgrade_legacy_keys",
]

Tensor = torch.Tensor

SOFTMAX_FLOPS_PER_SCORE = 6  # softmax (max, exp, sum, divide ~ 5) + the additive bias/mask (1), per score


def attention_score_flops(num_scores: int, *, qk_dim: int, v_dim: int) -> tuple[int, int]:
    """(matmul FLOPs, other FLOPs) of ``softmax(q k^T + bias) v`` over ``num_scores`` (query, key, head) scores."""
    return 2 * num_scores * (qk_dim + v_dim), SOFTMAX_FLOPS_PER_SCORE * num_scores


@dataclass(frozen=True)
class LayerSpec:
    """What an attention kind's builder gets for one block: sizes, position and the model's whole config."""

    embed_dim: int
    num_heads: int
    layer: int  # index of the particle block (class blocks: num_layers + their index)
    depth: int  # 0-based depth of the block in the whole stack (the differential lambda schedule)
    dropout: float
    backend: str
    cfg: Any  # the model's ParTConfig, for the kind's own options


class AttentionCore(nn.Module):
    """Base of every kind's core: per-head ``(q, k, v) -> out`` of shape (B, H, Lq, D), plus its own FLOP count.

    ``backend`` names the function that computes dense softmax attention (``backends.BACKENDS``); cores that do not
    use one for some step say so in their docstring. ``layer`` is the block index (for records and schedules).

    A kind's core implements ``forward(q, k, v, *, bias, key_padding_mask, x, ctx)``: q, k, v (B, H, L, D); bias
    additive (B, H, Lq, Lk); key_padding_mask bool (B, Lk), True = padding; x the normalised block input (B, Lq, E)
    that q was projected from; ctx this forward's ``ForwardContext``.
    """

    def __init__(self, *, backend: str = "sdpa", dropout: float = 0.0, layer: int = 0) -> None:
        super().__init__()
        get_backend(backend)
        self.backend = backend
        self.dropout = dropout
        self.layer = layer

    def dense(self, q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None,
              key_padding_mask: Tensor | None, backend: str | None = None) -> Tensor:
        """``softmax(q k^T / sqrt(d) + bias) v`` by ``backend`` (default: this core's), its capabilities checked
        first."""
        backend = backend or self.backend
        check_backend(backend, has_bias=bias is not None, has_mask=key_padding_mask is not None,
                      training=self.training and torch.is_grad_enabled(), device=q.device)
        dropout_p = self.dropout if self.training else 0.0
        return get_backend(backend).core(q, k, v, bias=bias, key_padding_mask=key_padding_mask, dropout_p=dropout_p)

    def flops(self, args: tuple, kwargs: dict, out: Tensor) -> tuple[int, int]:
        """Dense cost; cores that compute more or less override it (read by profiling/flops.py)."""
        q, k = args[0], args[1]
        batch, heads, q_len, dim = q.shape
        return attention_score_flops(batch * heads * q_len * k.size(2), qk_dim=dim, v_dim=dim)


class DenseCore(AttentionCore):
    """Attention over all keys with the pair bias: ParT's softmax map, or differential maps, each by the backend."""

    def __init__(self, *, maps: nn.Module | None = None, backend: str = "sdpa", dropout: float = 0.0,
                 layer: int = 0) -> None:
        super().__init__(backend=backend, dropout=dropout, layer=layer)
        self.maps = maps if maps is not None else SoftmaxMaps()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None, key_padding_mask: Tensor | None,
                x: Tensor, ctx: ForwardContext) -> Tensor:
        def attend(q_part: Tensor, k_part: Tensor, first: bool) -> Tensor:
            return self.dense(q_part, k_part, v, bias=bias, key_padding_mask=key_padding_mask, backend=ctx.backend)

        return self.maps(q, k, attend)

    def flops(self, args: tuple, kwargs: dict, out: Tensor) -> tuple[int, int]:
        q, k = args[0], args[1]
        batch, heads, q_len, dim = q.shape
        scores = self.maps.num_maps * batch * heads * q_len * k.size(2)
        return attention_score_flops(scores, qk_dim=int(dim * self.maps.qk_fraction), v_dim=dim)


class MultiheadAttention(nn.Module):
    """Multi-head attention with an optional additive bias per head and a key padding mask.

    ``core`` is the attention kind's module (default: ``DenseCore``, softmax maps by ``backend``). The backend may
    be changed after construction (``set_attention_backend`` on a whole model).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 backend: str = "sdpa", core: AttentionCore | None = None, qk_norm: bool = False,
                 gate: bool = False, norm: NormKind = "layernorm") -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.value_gate: nn.Linear | None = None  # per-token, per-head gate of the value residual (later layers)
        self.q_norm = make_norm(norm, self.head_dim) if qk_norm else None  # ParT v3.5+: one weight for all heads
        self.k_norm = make_norm(norm, self.head_dim) if qk_norm else None
        self.gate_proj = nn.Linear(embed_dim, embed_dim, bias=bias) if gate else None  # ParT v3.5+ output gate
        self.core = core if core is not None else DenseCore(backend=backend, dropout=dropout)
        self._register_load_state_dict_pre_hook(legacy_core_keys)

    @property
    def backend(self) -> str:
        return self.core.backend

    def enable_value_residual(self) -> None:
        """Add the learned gate that mixes the first layer's values into this layer's values."""
        self.value_gate = nn.Linear(self.embed_dim, self.num_heads)
        nn.init.zeros_(self.value_gate.weight)
        nn.init.zeros_(self.value_gate.bias)

    def mix_values(self, v: Tensor, query: Tensor, state: ValueResidual) -> Tensor:
        """Value residual: the first layer stores its values; later layers use v + g (v0 - v), g = sigmoid(gate)."""
        if self.value_gate is None:
            state.v0 = v
            return v
        if state.v0 is None:
            raise RuntimeError("value residual: a later layer ran before the first layer stored its values")
        gate = torch.sigmoid(self.value_gate(query)).transpose(1, 2).unsqueeze(-1)  # (B, H, L, 1)
        return v + gate * (state.v0 - v)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project_qkv(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project to per-head q, k, v of shape (batch, heads, length, head_dim); key doubles as value input."""
        if query is key:
            q, k, v = nn.functional.linear(query, self.in_proj.weight, self.in_proj.bias).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj.weight.split((self.embed_dim, 2 * self.embed_dim))
            b_q, b_kv = (None, None) if self.in_proj.bias is None else \
                self.in_proj.bias.split((self.embed_dim, 2 * self.embed_dim))
            q = nn.functional.linear(query, w_q, b_q)
            k, v = nn.functional.linear(key, w_kv, b_kv).chunk(2, dim=-1)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def forward(self, query: Tensor, key: Tensor | None = None, *, bias: Tensor | None = None,
                key_padding_mask: Tensor | None = None, ctx: ForwardContext | None = None) -> Tensor:
        """query: (B, Lq, E); key (= value input): (B, Lk, E), defaults to query (self-attention).

        bias: additive (B, H, Lq, Lk); key_padding_mask: bool (B, Lk), True where the key is padding; ctx: this
        forward's context (value residual state, DSA schedule), a default one when None.
        """
        ctx = ForwardContext() if ctx is None else ctx
        key = query if key is None else key
        q, k, v = self.project_qkv(query, key)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if ctx.value_residual is not None and key is query:
            v = self.mix_values(v, query, ctx.value_residual)
        out = self.core(q, k, v, bias=bias, key_padding_mask=key_padding_mask, x=query, ctx=ctx)  # (B, H, Lq, D)
        out = out.transpose(1, 2).reshape(query.size(0), query.size(1), self.embed_dim)
        if self.gate_proj is not None:
            out = out * torch.sigmoid(self.gate_proj(query))
        return self.out_proj(out)


# parameters that lived on the attention module itself before cores existed (differential maps, DSA indexer)
_LEGACY_CORE_PREFIXES = {"lambda_q1": "maps.", "lambda_k1": "maps.", "lambda_q2": "maps.", "lambda_k2": "maps.",
                         "subln.": "maps.", "indexer.": ""}


def legacy_core_keys(state: dict, prefix: str, *args: object) -> None:
    """``load_state_dict`` pre-hook: move a checkpoint's pre-registry keys (``attn.lambda_q1``, ``attn.indexer.*``)
    to their place under ``attn.core`` so checkpoints written before the attention registry still load."""
    for key in [k for k in state if k.startswith(prefix)]:
        name = key[len(prefix):]
        for old, sub in _LEGACY_CORE_PREFIXES.items():
            if name.startswith(old):
                state[f"{prefix}core.{sub}{name}"] = state.pop(key)
                break


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every attention core of ``model`` to ``backend`` (weights unchanged)."""
    get_backend(backend)
    for module in model.modules():
        if isinstance(module, AttentionCore):
            module.backend = backend
    return model


def upgrade_legacy_keys(model: nn.Module, state: dict) -> dict:
    """A copy of ``state`` with every attention module's pre-registry keys moved (see ``legacy_core_keys``)."""
    state = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, MultiheadAttention):
            legacy_core_keys(state, f"{name}." if name else "")
    return state
