"""Differential attention: lambda schedule, re-parameterisation, reduction to plain attention, bias/mask handling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from weaver_ext.attention import DenseCore
from weaver_ext.backends import math_attention, merge_bias_and_mask
from weaver_ext.context import ForwardContext
from weaver_ext.maps import DifferentialMaps, lambda_init_schedule
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config

ATOL = 1e-5  # fp32


def _diff_core(head_dim: int, *, depth: int, backend: str = "sdpa") -> DenseCore:
    """The core of kind 'differential': dense attention with differential maps."""
    return DenseCore(maps=DifferentialMaps(head_dim, depth=depth), backend=backend)


def _attend(core: DenseCore, q, k, v, *, bias, key_padding_mask):
    return core(q, k, v, bias=bias, key_padding_mask=key_padding_mask, x=q, ctx=ForwardContext())


def _qkv(batch: int = 3, heads: int = 2, length: int = 9, dim: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=gen) for _ in range(3)]


def test_lambda_init_schedule():
    assert lambda_init_schedule(0) == pytest.approx(0.2)
    assert lambda_init_schedule(1) == pytest.approx(0.8 - 0.6 * math.exp(-0.3))
    values = [lambda_init_schedule(d) for d in range(12)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)) and values[-1] < 0.8
    with pytest.raises(ValueError, match="depth must be >= 0"):
        lambda_init_schedule(-1)


def test_lambda_reparameterisation():
    maps = DifferentialMaps(8, depth=3)
    with torch.no_grad():
        for name, value in (("lambda_q1", 0.3), ("lambda_k1", 0.2), ("lambda_q2", -0.1), ("lambda_k2", 0.5)):
            getattr(maps, name).fill_(value)
    half = 4
    expected = math.exp(half * 0.3 * 0.2) - math.exp(half * -0.1 * 0.5) + lambda_init_schedule(3)
    assert maps.lambda_value().item() == pytest.approx(expected, rel=1e-6)


def _zero_lambda(maps: DifferentialMaps) -> None:
    """lambda = exp(0) - exp(0) + 0 = 0 and the output scale (1 - lambda_init) = 1."""
    maps.lambda_init = 0.0
    with torch.no_grad():
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            getattr(maps, name).zero_()


def test_reduces_to_plain_attention_of_the_first_pair_when_lambda_is_zero():
    """With lambda = 0 and scale 1, the second map drops out: out = RMSNorm(softmax(q1 k1^T / sqrt(D/2) + B) V).

    Replacing the RMSNorm by the identity as well leaves exactly standard attention of (q1, k1) with the full V.
    """
    attn = _diff_core(8, depth=0, backend="math")
    _zero_lambda(attn.maps)
    q, k, v = _qkv()
    bias = torch.randn(3, 2, 9, 9)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 5:] = True
    q1, k1 = q[..., :4], k[..., :4]
    plain = math_attention(q1, k1, v, bias=bias, key_padding_mask=pad)
    got = _attend(attn, q, k, v, bias=bias, key_padding_mask=pad)
    torch.testing.assert_close(got, attn.maps.subln(plain), atol=ATOL, rtol=1e-5)
    attn.maps.subln = nn.Identity()
    torch.testing.assert_close(_attend(attn, q, k, v, bias=bias, key_padding_mask=pad), plain, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_bias_and_padding_enter_both_maps(backend):
    """attend == (1 - lambda_init) RMSNorm((A1 - lambda A2) V) with A_i = softmax(q_i k_i^T / sqrt(D/2) + B + pad)."""
    torch.manual_seed(0)
    attn = _diff_core(8, depth=2, backend=backend)
    q, k, v = _qkv()
    bias = torch.randn(3, 2, 9, 9)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[2, 3:] = True
    additive = merge_bias_and_mask(bias, pad, torch.float32)
    maps = [torch.softmax(qi @ ki.transpose(-2, -1) / math.sqrt(4) + additive, dim=-1)
            for qi, ki in ((q[..., :4], k[..., :4]), (q[..., 4:], k[..., 4:]))]
    lam = attn.maps.lambda_value()
    assert abs(lam.item()) > 0.05  # the second map really contributes
    expected = attn.maps.subln((maps[0] - lam * maps[1]) @ v) * (1 - lambda_init_schedule(2))
    with torch.no_grad():
        got = _attend(attn, q, k, v, bias=bias, key_padding_mask=pad)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    # padded keys are invisible: changing their values does not change any output
    v2 = v.clone()
    v2[2, :, 3:] += 100.0
    with torch.no_grad():
        torch.testing.assert_close(_attend(attn, q, k, v2, bias=bias, key_padding_mask=pad), got, atol=ATOL, rtol=1e-5)


def _tiny_diff_part(**extra) -> ParticleTransformer:
    torch.manual_seed(0)
    cfg = part_config(attention="differential", input_dim=7, num_classes=3, num_layers=3, num_cls_layers=1,
                      embed_dims=(32, 32), pair_embed_dims=(16,), num_heads=4, trim=False, **extra)
    return ParticleTransformer(cfg)


def _jets(batch: int = 4, length: int = 16):
    gen = torch.Generator().manual_seed(2)
    mask = (torch.arange(length)[None] < torch.tensor([length, 9, 4, 12])[:batch, None])[:, None].float()
    p3 = torch.randn(batch, 3, length, generator=gen) * 20
    v = torch.cat((p3, p3.norm(dim=1, keepdim=True) + 0.1), dim=1) * mask
    return torch.randn(batch, 7, length, generator=gen) * mask, v, mask


def test_diff_part_uses_the_schedule_per_block_and_trains_every_parameter():
    model = _tiny_diff_part().train()
    schedule = [lambda_init_schedule(d) for d in range(3)]
    assert [b.attn.core.maps.lambda_init for b in model.blocks] == pytest.approx(schedule)
    assert not isinstance(model.cls_blocks[0].attn.core.maps, DifferentialMaps)  # class blocks: plain by default
    model(*_jets()).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_diff_class_blocks_and_fixed_lambda_init():
    model = _tiny_diff_part(diff_cls_blocks=True, diff_lambda_init=0.5)
    assert isinstance(model.cls_blocks[0].attn.core.maps, DifferentialMaps)
    assert {b.attn.core.maps.lambda_init for b in [*model.blocks, *model.cls_blocks]} == {0.5}


def test_network_config_builds_diff_part_from_weaver_options():
    network = import_network_config(REPO_ROOT / "networks" / "diff_part.py", name="_test_diff_part_network")
    data_config = load_data_config(JETCLASS_CONFIGS / "JetClass_kin.yaml")
    model, info = network.get_model(data_config, for_inference=True, num_layers=2, embed_dims=[32, 32],
                                    pair_embed_dims=[16], num_heads=2, diff_lambda_init=0.3)
    maps = model.mod.blocks[1].attn.core.maps
    assert isinstance(maps, DifferentialMaps) and maps.lambda_init == 0.3
    inputs = [torch.rand(info["input_shapes"][k]).repeat(2, 1, 1) for k in info["input_names"]]
    with torch.inference_mode():
        out = model.eval()(*inputs)
    assert out.shape == (2, 10) and torch.allclose(out.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="differential attention needs an even head_dim"):
        network.get_model(data_config, embed_dims=[24, 24], num_heads=8)
