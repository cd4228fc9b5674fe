"""Transformer refinements of ParT (value residual, registers, local attention, positional encodings,
checkpointing, latent tokens): each checked against a reduction to the plain model or a brute-force reference."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import weaver_batch
from weaver_ext.config import OptionError
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config
from weaver_ext.positional import eta_phi, local_attention_mask, pt_rank, sinusoidal

ATOL = 1e-5  # fp32
TINY = dict(input_dim=7, num_classes=3, num_layers=2, num_cls_layers=1, embed_dims=(32, 32), pair_embed_dims=(16,),
            num_heads=4, trim=False)


def _jets(batch: int = 4, length: int = 16, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([length, 9, 4, 12, 1, 7])[:batch]
    mask = (torch.arange(length)[None] < lengths[:, None])[:, None].float()
    p3 = torch.randn(batch, 3, length, generator=gen) * 20
    p3[:, 2] += 30  # a jet-like forward boost
    v = torch.cat((p3, p3.norm(dim=1, keepdim=True) + 0.1), dim=1) * mask
    return torch.randn(batch, 7, length, generator=gen) * mask, v, mask


def _model(seed: int = 0, **options):
    torch.manual_seed(seed)
    return ParticleTransformer(part_config(**{**TINY, **options}))


def _same_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected


OPTIONS = [
    dict(attention="differential"), dict(value_residual=True), dict(num_registers=3), dict(attn_window=2),
    dict(attn_knn=3), dict(grad_checkpoint=True), dict(pos_encoding="sequence"), dict(pos_encoding="eta_phi"),
    dict(pos_encoding="fourier"), dict(latent_tokens=4), dict(head="latent"), dict(pair_bias=False),
    dict(layer_scale_init=1e-3, ffn_activation="swiglu"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_no_parameter_is_left_unused_in_a_training_step(options):
    """weaver trains with DDP find_unused_parameters=False: every parameter must get a gradient."""
    model = _model(**options).train()
    out = model(*_jets())
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_value_residual_with_closed_gates_is_plain_part():
    """Gate sigmoid(-1e4) = 0 keeps each layer's own values: the model equals ParT with the same weights."""
    plain = _model().eval()
    vr = _model(value_residual=True).eval()
    _same_weights(plain, vr)
    assert vr.blocks[0].attn.value_gate is None and vr.blocks[1].attn.value_gate is not None
    with torch.no_grad():
        vr.blocks[1].attn.value_gate.weight.zero_()
        vr.blocks[1].attn.value_gate.bias.fill_(-1e4)
        torch.testing.assert_close(vr(*_jets()), plain(*_jets()), atol=ATOL, rtol=1e-5)
        vr.blocks[1].attn.value_gate.bias.fill_(0.0)  # open gates: a different model
        assert (vr(*_jets()) - plain(*_jets())).abs().max() > 1e-4


def test_registers_get_zero_pair_bias_and_are_not_pooled():
    model = _model(num_registers=3).eval()
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, a, kw: seen.update(kw) or None, with_kwargs=True)
    x, v, mask = _jets()
    with torch.no_grad():
        encoded = model.encode(x, v, mask)
        tokens, padding_mask = encoded.tokens, encoded.padding_mask
        bias = model.pair_bias(v, None, mask)
        model(x, v, mask)
    assert tokens.shape == (4, 16, 32) and padding_mask.shape == (4, 16)  # registers stripped before pooling
    block_bias, block_pad = seen["bias"], seen["padding_mask"]
    assert block_bias.shape == (4, 4, 19, 19)
    assert (block_bias[..., 16:, :] == 0).all() and (block_bias[..., :, 16:] == 0).all()
    torch.testing.assert_close(block_bias[..., :16, :16], bias)
    assert not block_pad[:, 16:].any()


def test_window_mask_matches_brute_force_in_pt_order():
    x, v, mask = _jets()
    add = local_attention_mask(v, mask, window=2)[:, 0]
    rank = pt_rank(v, mask)
    real = mask[:, 0].bool()
    for b in range(4):
        for i in range(16):
            for j in range(16):
                allowed = (not real[b, i]) or abs(rank[b, i] - rank[b, j]) <= 2
                assert (add[b, i, j] == 0) == allowed


def test_knn_mask_keeps_itself_and_k_nearest_real_particles():
    x, v, mask = _jets()
    add = local_attention_mask(v, mask, knn=3)[:, 0]
    coords = eta_phi(v, mask)
    real = mask[:, 0].bool()
    for b in range(4):
        n_real = int(real[b].sum())
        for i in torch.nonzero(real[b]).flatten().tolist():
            allowed = torch.nonzero(add[b, i] == 0).flatten()
            assert i in allowed.tolist() and len(allowed) == min(3, n_real)
            assert real[b, allowed].all()
            dist = (coords[b, :n_real] - coords[b, i]).norm(dim=-1)
            assert dist[allowed].max() <= dist.sort().values[min(3, n_real) - 1] + 1e-6
        assert (add[b, ~real[b]] == 0).all()  # padded rows stay open: no empty softmax row


def test_local_attention_covering_all_particles_is_plain_part():
    plain = _model().eval()
    local = _model(attn_knn=16, attn_window=16).eval()
    _same_weights(plain, local)
    with torch.no_grad():
        torch.testing.assert_close(local(*_jets()), plain(*_jets()), atol=ATOL, rtol=1e-5)


def test_positions_follow_the_particles_under_shuffling():
    """Encodings come from pT rank / (eta, phi), not the storage index, so SequenceTrimmer's shuffle is harmless."""
    x, v, mask = _jets()
    perm = torch.randperm(16)
    for kind in ("sequence", "eta_phi", "fourier"):
        model = _model(pos_encoding=kind)
        enc = model.pos_encoding(v, mask)
        # atol 1e-4: the jet axis is a float sum whose rounding depends on the order; angles reach ~100 rad
        torch.testing.assert_close(model.pos_encoding(v[..., perm], mask[..., perm]), enc[:, perm], atol=1e-4,
                                   rtol=1e-4)
        assert (enc[mask[:, 0] == 0] == 0).all()
    rank = pt_rank(v, mask)
    assert rank[0].sort().values.tolist() == list(range(16))
    torch.testing.assert_close(sinusoidal(torch.tensor([0.0]), 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_eta_phi_matches_pf_points_on_real_jets(jet_files):
    """(eta, phi) relative to the four-vector sum equals the data config's pf_points (part_deta, part_dphi)."""
    batch = weaver_batch(jet_files[:2], JETCLASS_CONFIGS / "JetClass_kin.yaml", max_jets=40)
    coords = eta_phi(batch["pf_vectors"], batch["pf_mask"])
    points = batch["pf_points"].transpose(1, 2)
    real = batch["pf_mask"][:, 0].bool()
    assert (coords[real] - points[real]).abs().max() < 0.02  # jet axis from constituents vs stored jet axis


def test_gradient_checkpointing_gives_the_same_gradients():
    x, v, mask = _jets()
    grads = []
    for checkpointing in (False, True):
        model = _model(grad_checkpoint=checkpointing, value_residual=True,
                       num_registers=2, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0).train()
        model(x, v, mask).pow(2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=ATOL, rtol=1e-5)


def _flops(model: torch.nn.Module, length: int) -> int:
    x, v, mask = (t.repeat(1, 1, length // 16) for t in _jets(batch=2))
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, v, torch.ones_like(mask))
    return counter.get_total_flops()


def test_latent_encoder_cost_is_linear_in_particles():
    """num_layers=0 + latent tokens: doubling N roughly doubles FLOPs (N x L); ParT's blocks grow faster (N^2)."""
    latent = _model(num_layers=0, latent_tokens=4, latent_layers=2).eval()
    part = _model().eval()
    assert latent.pair_embed is None
    ratio_latent = _flops(latent, 256) / _flops(latent, 128)
    ratio_part = _flops(part, 256) / _flops(part, 128)
    assert ratio_latent < 2.05 < 2.5 < ratio_part
    encoded = latent.encode(*_jets())
    assert encoded.tokens.shape == (4, 4, 32) and not encoded.padding_mask.any()


def test_latent_head_replaces_class_attention():
    model = _model(head="latent", head_queries=3).eval()
    assert model.cls_blocks is None and model.cls_token is None and model.latent_head.tokens.shape == (1, 3, 32)
    with torch.no_grad():
        assert model(*_jets()).shape == (4, 3)


def test_transformer_network_config_options_and_errors():
    network = import_network_config(REPO_ROOT / "networks" / "transformer.py", name="_test_transformer_network")
    data_config = load_data_config(JETCLASS_CONFIGS / "JetClass_kin.yaml")
    tiny = dict(num_layers=2, num_cls_layers=1, embed_dims=[32, 32], pair_embed_dims=[16], num_heads=4)
    model, _ = network.get_model(data_config, attention="differential", value_residual=True, num_registers=2,
                                 attn_knn=8, pos_encoding="fourier", grad_checkpoint=True, head="latent", **tiny)
    assert model.mod.registers.shape == (1, 2, 32) and model.mod.latent_head is not None
    plain, _ = network.get_model(data_config, pair_bias=False, **tiny)
    assert plain.mod.pair_embed is None
    with pytest.raises(OptionError, match="option 'pos_encoding' expects 'none' | 'sequence'"):
        network.get_model(data_config, pos_encoding="rope", **tiny)
    with pytest.raises(ValueError, match="attn_knn must be >= 0"):
        network.get_model(data_config, attn_knn=-1, **tiny)
    with pytest.raises(ValueError, match="need num_layers > 0"):
        network.get_model(data_config, **{**tiny, "num_layers": 0, "num_registers": 2})
