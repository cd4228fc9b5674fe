"""A test-only attention kind, added the way docs/ARCHITECTURE.md walks through: this one file and one registry line.

``scaled_softmax`` is softmax attention at half the temperature (scores x 2). The file is also a weaver network
config (the last line), so ``weaver --network-config tests/kinds/scaled_softmax.py -o attention
"'scaled_softmax'"`` trains it: tests/e2e/test_weaver_kinds.py does exactly that.
"""

from __future__ import annotations

import math

import torch

from weaver_ext.attention import AttentionCore, LayerSpec, attention_score_flops
from weaver_ext.attention_kinds import ATTENTION_KINDS, AttentionKind, register_attention_kind
from weaver_ext.context import ForwardContext
from weaver_ext.network_config import part_family

TEMPERATURE = 0.5


class ScaledSoftmaxCore(AttentionCore):
    """softmax(q k^T / (T sqrt(d)) + bias) v through the selected backend."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: torch.Tensor | None,
                key_padding_mask: torch.Tensor | None, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.dense(q / math.sqrt(TEMPERATURE) ** 2, k, v, bias=bias, key_padding_mask=key_padding_mask)

    def flops(self, args: tuple, kwargs: dict, out: torch.Tensor) -> tuple[int, int]:
        q, k = args[0], args[1]
        batch, heads, q_len, dim = q.shape
        return attention_score_flops(batch * heads * q_len * k.size(2), qk_dim=dim, v_dim=dim)


def build(spec: LayerSpec) -> ScaledSoftmaxCore:
    return ScaledSoftmaxCore(backend=spec.backend, dropout=spec.dropout, layer=spec.layer)


if "scaled_softmax" not in ATTENTION_KINDS:  # the registry line (guarded: weaver and pytest may both import this)
    register_attention_kind("scaled_softmax", AttentionKind(build, "softmax at half the temperature (test only)"))

get_model, get_loss, get_train_fn, get_evaluate_fn = part_family("tests/kinds/scaled_softmax.py")
