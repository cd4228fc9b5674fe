"""The ``grouped`` backend of the packed layout: its fused C++ kernel and its batched-matmul fallback, each against
``math`` on every jet alone, with a dense bias built here independently from the pair terms."""

from __future__ import annotations

import pytest
import torch

from weaver_ext.backends import get_backend, math_attention
from weaver_ext.grouped import PairGroups, group_pair_bias
from weaver_ext.native import fused_grouped_attention, grouped_attention_library

HEADS = 4


def _dense_bias(terms: torch.Tensor, first: int, particles: int, length: int, self_pairs: bool) -> torch.Tensor:
    """(H, L, L) by explicit loops: terms of pairs i >= j in row-major order, symmetric; -inf on padded keys."""
    bias = torch.zeros(HEADS, length, length)
    row = first
    for i in range(particles):
        for j in range(i + 1 if self_pairs else i):
            bias[:, i, j] = bias[:, j, i] = terms[row]
            row += 1
    if particles:
        bias[:, :, particles:] = float("-inf")
    return bias


def _layout(dim: int, self_pairs: bool, seed: int = 0):
    """Groups of (jets, length) with some jets shorter than their group, one without particles, 5 spare rows."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [[1, 1], [3, 2], [17, 17, 9, 12, 17], [40, 33], [0, 77], [128, 100]]  # particles per jet, by group
    groups, jets, pair_row, first, first_jet = [], [], 0, 0, 0
    for group in shapes:
        length = max(max(group), 1)
        groups.append([first, len(group), length, first_jet])
        for particles in group:
            jets.append([pair_row, particles])
            pair_row += particles * (particles + 1) // 2 if self_pairs else particles * (particles - 1) // 2
        first, first_jet = first + len(group) * length, first_jet + len(group)
    rows = first + 5
    q, k, v = (t.view(1, rows, HEADS, dim).transpose(1, 2)
               for t in torch.randn(rows, 3 * HEADS * dim, generator=gen).chunk(3, dim=-1))
    terms = torch.randn(pair_row, HEADS, generator=gen)
    return q, k, v, PairGroups(terms, torch.tensor(jets), torch.tensor(groups), self_pairs), first


def _check_each_jet(out: torch.Tensor, q, k, v, bias: PairGroups, used_rows: int, atol: float) -> None:
    assert out.shape == q.shape
    for first, count, length, first_jet in bias.groups.tolist():
        for r in range(count):
            pair_row, particles = bias.jets[first_jet + r].tolist()
            span = slice(first + r * length, first + (r + 1) * length)
            dense = _dense_bias(bias.pair_terms, pair_row, particles, length, bias.self_pairs)
            expected = math_attention(q[:, :, span], k[:, :, span], v[:, :, span], bias=dense[None])
            assert torch.allclose(out[:, :, span], expected, atol=atol, rtol=atol), (first_jet + r, particles)
    assert torch.equal(out[:, :, used_rows:], torch.zeros_like(out[:, :, used_rows:]))


@pytest.mark.parametrize("self_pairs", [True, False])
def test_group_pair_bias_equals_the_loops(self_pairs):
    _, _, _, bias, _ = _layout(16, self_pairs)
    for _, count, length, first_jet in bias.groups.tolist():
        got = group_pair_bias(bias.pair_terms, bias.jets[first_jet:first_jet + count], length, HEADS,
                              self_pairs=self_pairs)
        for r in range(count):
            pair_row, particles = bias.jets[first_jet + r].tolist()
            assert torch.equal(got[r], _dense_bias(bias.pair_terms, pair_row, particles, length, self_pairs))


@pytest.mark.parametrize("dim", [16, 32])
@pytest.mark.parametrize("self_pairs", [True, False])
def test_fused_kernel_equals_math_on_every_jet(dim, self_pairs):
    """The C++ kernel (weaver_ext/native.py) on q, k, v read in place from one (T, 3E) projection: lengths that are
    not multiples of the vector width, padded keys, a jet without particles, 128 keys. fp32, 1e-5."""
    if grouped_attention_library() is None:
        pytest.skip("no C++ compiler: the packed layout runs its bmm fallback (tested below)")
    q, k, v, bias, used = _layout(dim, self_pairs)
    out = fused_grouped_attention(q, k, v, bias.pair_terms, bias.jets, bias.groups, self_pairs=self_pairs)
    assert out is not None
    _check_each_jet(out.unsqueeze(0).transpose(1, 2), q, k, v, bias, used, atol=1e-5)


def test_backend_fallback_equals_math_on_every_jet():
    """The batched-matmul path (bf16 engines, no compiler, head dims the kernel does not take): head dim 8."""
    q, k, v, bias, used = _layout(8, True)
    assert fused_grouped_attention(q, k, v, bias.pair_terms, bias.jets, bias.groups, self_pairs=True) is None
    _check_each_jet(get_backend("grouped").core(q, k, v, bias=bias), q, k, v, bias, used, atol=1e-5)


def test_kernel_declines_what_it_cannot_run():
    q, k, v, bias, _ = _layout(16, True)
    args = (bias.pair_terms, bias.jets, bias.groups)
    assert fused_grouped_attention(q.double(), k.double(), v.double(), *args, self_pairs=True) is None
    too_long = torch.tensor([[0, 1, 129, 0]])
    assert fused_grouped_attention(q, k, v, bias.pair_terms, bias.jets, too_long, self_pairs=True) is None


def test_grouped_backend_runs_only_with_the_packed_layouts_groups():
    q = torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="packed fast inference path"):
        get_backend("grouped").core(q, q, q, bias=torch.zeros(1, 2, 6, 6))


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "bmm"])
def test_class_attention_equals_math_on_every_jet(kernel):
    """Each jet's class token attends to itself and the jet's real rows only (its padded rows never)."""
    from weaver_ext.native import fused_class_attention

    if kernel and grouped_attention_library() is None:
        pytest.skip("no C++ compiler")
    _, _, _, bias, used = _layout(16, True)
    num_jets = len(bias.jets)
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, HEADS, num_jets, 16, generator=gen)
    k, v = (t.view(1, num_jets + used, HEADS, 16).transpose(1, 2)
            for t in torch.randn(num_jets + used, 2 * HEADS * 16, generator=gen).chunk(2, dim=-1))
    if kernel:
        out = fused_class_attention(q, k, v, bias.jets, bias.groups).unsqueeze(0).transpose(1, 2)
    else:
        out = torch.ops.weaverlab.grouped_class_attention.default(q.double(), k.double(), v.double(), bias.jets,
                                                                   bias.groups).float().unsqueeze(0).transpose(1, 2)
    for first, count, length, first_jet in bias.groups.tolist():
        for r in range(count):
            jet, particles = first_jet + r, int(bias.jets[first_jet + r, 1])
            rows = slice(num_jets + first + r * length, num_jets + first + r * length + particles)
            keys, values = (torch.cat((t[:, :, jet:jet + 1], t[:, :, rows]), dim=2) for t in (k, v))
            expected = math_attention(q[:, :, jet:jet + 1], keys, values)
            assert torch.allclose(out[:, :, jet:jet + 1], expected, atol=1e-5, rtol=1e-5), jet
