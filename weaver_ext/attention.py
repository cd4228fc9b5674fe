"""One multi-head attention module: projections, mask/bias resolution and backend dispatch.

Parameter names (``in_proj``, ``out_proj``) match weaver-core's ``Attention`` so its checkpoints load unchanged.
Variants change the *core* (see ``backends.py``) or subclass this module and override ``attend``; they never copy
the projection and reshaping code.
"""

from __future__ import annotations

import torch
from torch import nn

from .backends import check_backend, get_backend

Tensor = torch.Tensor


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
    ) -> Tensor:
        """query: (B, Lq, E); key (= value input): (B, Lk, E), defaults to query (self-attention).

        bias: additive (B, H, Lq, Lk); key_padding_mask: bool (B, Lk), True where the key is padding.
        """
        key = query if key is None else key
        q, k, v = self.project_qkv(query, key)
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
