"""profiling.roofline: the true FLOPs of a batch are the sum over its jets at their real multiplicities."""

from __future__ import annotations

import torch

from profiling.flops import count_flops
from profiling.roofline import _matmul_kernels, matmul_peak_gflops, native_bf16, true_flops
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config


def _jets(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, width = len(lengths), max(lengths) + 3
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).float().unsqueeze(1)
    x = torch.randn(n, 7, width, generator=gen) * mask
    pt = torch.rand(n, 1, width, generator=gen) + 0.5
    eta, phi = torch.randn(n, 1, width, generator=gen) * 0.3, torch.randn(n, 1, width, generator=gen) * 0.3
    v = torch.cat((pt * torch.cos(phi), pt * torch.sin(phi), pt * torch.sinh(eta), pt * torch.cosh(eta) + 0.01), 1)
    return x, v * mask + (1 - mask) * torch.tensor([1.0, 0, 0, 1]).view(1, 4, 1), mask


def test_true_flops_sum_the_jets_at_their_own_length():
    torch.manual_seed(0)
    model = ParticleTransformer(part_config(input_dim=7, num_classes=3, num_layers=2, embed_dims=(16, 16),
                                            pair_embed_dims=(8,), num_heads=2)).eval()
    lengths = [5, 9, 9, 14]
    x, v, mask = _jets(lengths)
    total = true_flops(model, [(x, v, mask)])
    per_jet = 0
    for i, length in enumerate(lengths):
        report = count_flops(model, (x[i:i + 1, :, :length], v[i:i + 1, :, :length], mask[i:i + 1, :, :length]))
        per_jet += report.matmul_flops + report.other_flops
    assert total == per_jet
    padded = count_flops(model, (x, v, torch.ones_like(mask)))  # every slot counted as a particle
    assert total < padded.matmul_flops + padded.other_flops


def test_native_bf16_reads_the_flags_and_the_peak_is_measured():
    assert native_bf16({"avx2", "amx_bf16", "avx512_bf16"}) == "AMX"
    assert native_bf16({"avx2", "avx512f", "avx512_bf16"}) == "AVX512_BF16"
    assert native_bf16({"avx2", "fma"}) is None
    assert matmul_peak_gflops(torch.float32, size=256, repeats=2) > 0


def test_every_timed_peak_kernel_computes_the_matmul():
    """The peak is the best of several kernels (torch.mm, oneDNN's prepacked linear): each must be a real a @ b."""
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(64, 48, generator=gen), torch.randn(48, 32, generator=gen)
    kernels = _matmul_kernels(a, b)
    assert len(kernels) >= 1
    for kernel in kernels:
        torch.testing.assert_close(kernel(), a @ b, atol=1e-4, rtol=1e-4)
