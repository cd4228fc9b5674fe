"""One multi-head attention module: projections, mask/bias resolution and backend dispatch.

Parameter names (``in_proj``, ``out_proj``) match weaver-core's ``Attention`` so its checkpoints load unchanged.
Variants change the *core* (see ``backends.py``) or subclass this module and override ``attend``; they never copy
the projection and reshaping code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .backends import check_backend, get_backend

Tensor = torch.Tensor


@dataclass
class ValueResidual:
    """Carries the first layer's values (B, H, L, D) to later layers (value residual learning, arXiv:2410.17897)."""

    v0: Tensor | None = None


class MultiheadAttention(nn.Module):
    """Multi-head attention with an optional additive bias per head and a key padding mask.

    ``backend`` selects the attention core by name and may be changed after construction
    (``set_attention_backend`` on a whole model).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        backend: str = "sdpa",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        get_backend(backend)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.backend = backend
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.value_gate: nn.Linear | None = None  # per-token, per-head gate of the value residual (later layers)

    def enable_value_residual(self) -> None:
        """Add the learned gate that mixes the first layer's values into this layer's values."""
        self.value_gate = nn.Linear(self.embed_dim, self.num_heads)
        nn.init.zeros_(self.value_gate.weight)
        nn.init.zeros_(self.value_gate.bias)

    def mix_values(self, v: Tensor, query: Tensor, state: ValueResidual | None, *, first: bool) -> Tensor:
        """Value residual: the first layer stores its values; later layers use v + g (v0 - v), g = sigmoid(gate)."""
        if state is None:
            return v
        if first:
            state.v0 = v
            return v
        if state.v0 is None or self.value_gate is None:
            raise RuntimeError("value residual: a later layer ran before the first layer stored its values")
        gate = torch.sigmoid(self.value_gate(query)).transpose(1, 2).unsqueeze(-1)  # (B, H, L, 1)
        return v + gate * (state.v0 - v)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project_qkv(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project to per-head q, k, v of shape (batch, heads, length, head_dim); key doubles as value input."""
        w_q, w_kv = self.in_proj.weight.split((self.embed_dim, 2 * self.embed_dim))
        b_q, b_kv = self.in_proj.bias.split((self.embed_dim, 2 * self.embed_dim)) if self.in_proj.bias is not None \
            else (None, None)
        if query is key:
            q, k, v = nn.functional.linear(query, self.in_proj.weight, self.in_proj.bias).chunk(3, dim=-1)
        else:
            q = nn.functional.linear(query, w_q, b_q)
            k, v = nn.functional.linear(key, w_kv, b_kv).chunk(2, dim=-1)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, *, bias: Tensor | None, key_padding_mask: Tensor | None
    ) -> Tensor:
        """Run the selected core; subclasses (differential, sparse attention) override this."""
        check_backend(
            self.backend,
            has_bias=bias is not None,
            has_mask=key_padding_mask is not None,
            training=self.training and torch.is_grad_enabled(),
            device=q.device,
        )
        core = get_backend(self.backend).core
        dropout_p = self.dropout if self.training else 0.0
        return core(q, k, v, bias=bias, key_padding_mask=key_padding_mask, dropout_p=dropout_p)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        *,
        bias: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        value_residual: ValueResidual | None = None,
    ) -> Tensor:
        """query: (B, Lq, E); key (= value input): (B, Lk, E), defaults to query (self-attention).

        bias: additive (B, H, Lq, Lk); key_padding_mask: bool (B, Lk), True where the key is padding;
        value_residual: shared state of the value residual (self-attention only), None = off.
        """
        key = query if key is None else key
        q, k, v = self.project_qkv(query, key)
        if value_residual is not None:
            v = self.mix_values(v, query, value_residual, first=self.value_gate is None)
        out = self.attend(q, k, v, bias=bias, key_padding_mask=key_padding_mask)  # (B, H, Lq, D)
        out = out.transpose(1, 2).reshape(query.size(0), query.size(1), self.embed_dim)
        return self.out_proj(out)


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every attention module of ``model`` to ``backend`` (weights unchanged)."""
    get_backend(backend)
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            module.backend = backend
    return model
