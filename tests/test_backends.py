"""Every attention backend against the ``math`` reference with the same inputs / weights.

Tolerances: fp32 forward and gradients atol 1e-5 (rtol 1e-5) for sdpa, bmm and flex (flex on CPU: forward only, it has
no CPU backward); flash runs in bf16, so its tolerance is 2e-2 absolute (bf16 has 8 mantissa bits) and its tests
need CUDA (marked ``gpu``).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from weaver_ext.attention import set_attention_backend
from weaver_ext.backends import BACKENDS, capability_table, check_backend, get_backend
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config

FP32_ATOL = 1e-5
BF16_ATOL = 2e-2
HEADS, DIM = 2, 8


def _inputs(batch: int, len_q: int, len_k: int, *, padded: bool, with_bias: bool, device: str = "cpu",
            seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, HEADS, n, DIM, generator=gen) for n in (len_q, len_k, len_k))
    bias = torch.randn(batch, HEADS, len_q, len_k, generator=gen) if with_bias else None
    mask = None
    if padded:
        lengths = torch.randint(1, len_k + 1, (batch,), generator=gen)
        lengths[0] = len_k  # at least one jet without padding, one with (when batch > 1)
        if batch > 1:
            lengths[-1] = max(1, len_k // 3)
        mask = torch.arange(len_k)[None, :] >= lengths[:, None]
    move = {"q": q, "k": k, "v": v, "bias": bias, "key_padding_mask": mask}
    return {n: (t.to(device) if t is not None else None) for n, t in move.items()}


def _run(backend: str, inputs: dict) -> torch.Tensor:
    core = get_backend(backend).core
    return core(inputs["q"], inputs["k"], inputs["v"], bias=inputs["bias"], key_padding_mask=inputs["key_padding_mask"])


CASES = [(b, lq, lk) for b in (1, 5) for lq, lk in ((13, 13), (1, 14))]  # self-attention and class attention


@pytest.mark.parametrize("batch,len_q,len_k", CASES)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("backend", ["sdpa", "bmm"])
def test_forward_and_backward_match_math(backend, batch, len_q, len_k, padded, with_bias):
    grads = {}
    outs = {}
    for name in ("math", backend):
        inputs = _inputs(batch, len_q, len_k, padded=padded, with_bias=with_bias)
        for t in ("q", "k", "v", "bias"):
            if inputs[t] is not None:
                inputs[t].requires_grad_(True)
        outs[name] = _run(name, inputs)
        outs[name].pow(2).sum().backward()
        grads[name] = [inputs[t].grad for t in ("q", "k", "v", "bias") if inputs[t] is not None]
    torch.testing.assert_close(outs[backend], outs["math"], atol=FP32_ATOL, rtol=1e-5)
    for got, want in zip(grads[backend], grads["math"], strict=True):
        torch.testing.assert_close(got, want, atol=FP32_ATOL, rtol=1e-5)


@pytest.mark.parametrize("batch,len_q,len_k", CASES)
def test_bmm_in_bf16_matches_fp32_math(batch, len_q, len_k):
    """bf16 inputs give bf16 outputs within bf16 rounding (2e-2) of the fp32 reference."""
    inputs = _inputs(batch, len_q, len_k, padded=True, with_bias=True)
    low = {n: (t.bfloat16() if t is not None and t.is_floating_point() else t) for n, t in inputs.items()}
    want = _run("math", inputs)
    got = _run("bmm", low)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=BF16_ATOL, rtol=BF16_ATOL)


@pytest.mark.parametrize("backend", ["sdpa", "bmm"])
def test_an_empty_jet_gets_zero_attention_output_not_nan(backend):
    inputs = _inputs(3, 13, 13, padded=True, with_bias=True)
    inputs["key_padding_mask"][1] = True  # jet 1 has no particle
    out = _run(backend, inputs)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_bmm_compiles_without_graph_breaks_and_keeps_empty_jets_at_zero():
    """Under torch.compile (fullgraph: a graph break fails) bmm takes the padding mask without a data-dependent
    check; outputs equal eager ``math`` within 1e-5 (class attention, one query per jet) and an empty jet gives 0."""
    inputs = _inputs(3, 1, 13, padded=True, with_bias=False)
    inputs["key_padding_mask"][1] = True  # jet 1 has no particle
    compiled = torch.compile(get_backend("bmm").core, fullgraph=True, dynamic=True)
    out = compiled(inputs["q"], inputs["k"], inputs["v"], bias=None, key_padding_mask=inputs["key_padding_mask"])
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    real = [0, 2]
    torch.testing.assert_close(out[real], _run("math", inputs)[real], atol=FP32_ATOL, rtol=1e-5)


@pytest.mark.parametrize("batch,len_q,len_k", [(1, 13, 13), (5, 13, 13), (5, 1, 14)])  # flex is ~1 s a call on CPU
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_flex_forward_matches_math_on_cpu(batch, len_q, len_k, padded, with_bias):
    inputs = _inputs(batch, len_q, len_k, padded=padded, with_bias=with_bias)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": expected in eager mode
        got = _run("flex", inputs)
    torch.testing.assert_close(got, _run("math", inputs), atol=FP32_ATOL, rtol=1e-5)


def test_flex_training_on_cpu_is_one_clear_error():
    with pytest.raises(ValueError, match=r"^attention backend 'flex' is inference-only on CPU \(no CPU backward\)"):
        check_backend("flex", has_bias=True, has_mask=True, training=True, device=torch.device("cpu"))
    check_backend("flex", has_bias=True, has_mask=True, training=False, device=torch.device("cpu"))  # allowed


def test_flash_rejections_are_one_line():
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="^attention backend 'flash' does not support an additive pair bias"):
        check_backend("flash", has_bias=True, has_mask=True, training=False, device=cpu)
    with pytest.raises(ValueError, match="^attention backend 'flash' does not run on cpu"):
        check_backend("flash", has_bias=False, has_mask=True, training=False, device=cpu)


def test_capability_table_lists_every_backend():
    table = capability_table()
    for name in ("math", "sdpa", "bmm", "flex", "flash"):
        assert f"| {name} |" in table
    assert "| flex | yes | yes | CUDA only | yes | yes |" in table
    assert "| flash | no | yes | yes | no | yes |" in table
    assert set(BACKENDS) >= {"math", "sdpa", "bmm", "flex", "flash"}


def _tiny_part() -> ParticleTransformer:
    torch.manual_seed(3)
    cfg = part_config(input_dim=7, num_classes=4, num_layers=2, num_cls_layers=1, embed_dims=(32, 32),
                     pair_embed_dims=(16,), num_heads=4, trim=False)
    return ParticleTransformer(cfg).eval()


def _jets(batch: int = 6, length: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    mask = (torch.arange(length)[None, :] < torch.randint(3, length + 1, (batch,), generator=gen)[:, None])
    mask = mask[:, None].float()
    p3 = torch.randn(batch, 3, length, generator=gen) * 20
    v = torch.cat((p3, p3.norm(dim=1, keepdim=True) + 0.1), dim=1) * mask
    return torch.randn(batch, 7, length, generator=gen) * mask, v, mask


def test_switching_a_whole_part_model_to_flex_keeps_outputs():
    model = _tiny_part()
    x, v, mask = _jets()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = set_attention_backend(model, "math")(x, v, mask)
        got = set_attention_backend(model, "flex")(x, v, mask)
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=1e-5)


def test_training_a_model_with_flex_on_cpu_fails_with_the_backend_error():
    model = set_attention_backend(_tiny_part().train(), "flex")
    with pytest.raises(ValueError, match="inference-only on CPU"):
        model(*_jets())


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [False, True])
def test_flex_forward_and_backward_match_math_on_cuda(padded):
    grads, outs = {}, {}
    for name in ("math", "flex"):
        inputs = _inputs(3, 13, 13, padded=padded, with_bias=True, device="cuda")
        for t in ("q", "k", "v"):
            inputs[t].requires_grad_(True)
        outs[name] = _run(name, inputs)
        outs[name].pow(2).sum().backward()
        grads[name] = [inputs[t].grad for t in ("q", "k", "v")]
    torch.testing.assert_close(outs["flex"], outs["math"], atol=1e-4, rtol=1e-4)
    for got, want in zip(grads["flex"], grads["math"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,len_q,len_k", [(1, 13, 13), (5, 13, 13), (5, 1, 14)])
@pytest.mark.parametrize("padded", [False, True])
def test_flash_forward_and_backward_match_math_on_cuda(batch, len_q, len_k, padded):
    grads, outs = {}, {}
    for name in ("math", "flash"):
        inputs = _inputs(batch, len_q, len_k, padded=padded, with_bias=False, device="cuda")
        for t in ("q", "k", "v"):
            inputs[t].requires_grad_(True)
        outs[name] = _run(name, inputs)
        outs[name].sum().backward()
        grads[name] = [inputs[t].grad for t in ("q", "k", "v")]
    torch.testing.assert_close(outs["flash"], outs["math"], atol=BF16_ATOL, rtol=BF16_ATOL)
    for got, want in zip(grads["flash"], grads["math"], strict=True):
        torch.testing.assert_close(got, want, atol=BF16_ATOL, rtol=BF16_ATOL)


def test_docs_show_the_current_capability_table():
    from tests.conftest import REPO_ROOT

    assert capability_table() in (REPO_ROOT / "docs" / "variants.md").read_text()
