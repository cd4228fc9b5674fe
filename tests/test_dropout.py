"""weaver_ext.dropout: independent Bernoulli(p) drops from geometric gaps, F.dropout's scaling, exact backward, and the
CPU attention-with-dropout path equal to the math reference under the same seed.

The statistical checks use a fixed seed (torch's CPU generator is the same on every machine) and 6-sigma bounds, so
they do not depend on chance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from weaver_ext.backends import bmm_attention, math_attention, sdpa_attention
from weaver_ext.dropout import Dropout, drop_positions, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_positions_are_independent_bernoulli(p):
    torch.manual_seed(0)
    n = 2_000_000
    dropped = torch.zeros(n, dtype=torch.bool)
    positions = drop_positions(n, p)
    assert bool((positions[1:] > positions[:-1]).all()) and 0 <= int(positions[0]) and int(positions[-1]) < n
    dropped[positions] = True
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(float(dropped.float().mean()) - p) < 6 * sigma
    both = (dropped[1:] & dropped[:-1]).float().mean()  # neighbours independent: P(both) = p^2
    assert abs(float(both) - p * p) < 6 * math.sqrt(p * p * (1 - p * p) / n)
    halves = dropped.view(2, -1).float().mean(1)  # no drift along the tensor
    assert float((halves - p).abs().max()) < 6 * sigma * math.sqrt(2)


def test_output_scaling_and_backward_match_the_dropped_positions():
    torch.manual_seed(1)
    x = torch.randn(64, 33, 17, requires_grad=True)
    out = dropout(x, 0.25)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.75)
    grad = torch.randn_like(out)
    out.backward(grad)
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], grad[kept] / 0.75)


def test_seeded_runs_repeat_and_eval_is_identity():
    x = torch.randn(1000, 10)
    torch.manual_seed(3)
    first = dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, dropout(x, 0.1))
    module = Dropout(0.1).eval()
    assert module(x) is x
    assert module.train()(x).shape == x.shape and module.p == 0.1


def test_cpu_dropout_paths_equal_math_attention_with_the_same_seed():
    """sdpa on CPU with dropout runs the explicit baddbmm path of bmm; with the same seed both draw the same positions
    as the math reference (1e-6: baddbmm scales q k^T after the product, math scales q before it)."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(3, 2, 20, 8, generator=gen) for _ in range(3))
    bias = torch.randn(3, 2, 20, 20, generator=gen)
    pad = torch.zeros(3, 20, dtype=torch.bool)
    pad[1, 15:] = True
    outs = []
    for fn in (math_attention, sdpa_attention, bmm_attention):
        torch.manual_seed(9)
        outs.append(fn(q, k, v, bias=bias, key_padding_mask=pad, dropout_p=0.2))
    assert max((out - outs[0]).abs().max() for out in outs[1:]) <= 1e-6
    no_drop = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(pad[:, None, None], float("-inf")))
    assert (outs[0] - no_drop).abs().max() > 1e-2  # dropout really dropped weights
