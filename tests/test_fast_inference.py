"""The fast inference path gives the standard ParT's outputs: bucketing, folding and packing are exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import JETCLASS_CONFIGS
from tests.helpers import weaver_batch
from weaver_ext.fast_inference import (
    CompiledShapes,
    FastInferenceConfig,
    FastParT,
    FoldedLinear,
    _fold_conv_bn,
    engine_for,
    group_indices,
    group_length,
    pack_real_first,
)
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config

SOFTMAX_TOL = 1e-5


def _randomise_batchnorms(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics so that folding is really exercised."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)


@pytest.fixture(scope="module")
def model_and_batch(jet_files):
    torch.manual_seed(0)
    model = ParticleTransformer(part_config(input_dim=17, num_classes=10, num_layers=3, for_inference=True)).eval()
    _randomise_batchnorms(model)
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / "JetClass_full.yaml", max_jets=400)
    perm = torch.randperm(len(batch["_label_"]), generator=torch.Generator().manual_seed(1))[:96]
    return model, {k: v[perm] for k, v in batch.items()}


@pytest.mark.parametrize(
    "cfg",
    [FastInferenceConfig(), FastInferenceConfig(bucket_size=8), FastInferenceConfig(bucket_size=0),
     FastInferenceConfig(fold_pair_embed=False), FastInferenceConfig(attention_backend="sdpa")],
    ids=["default", "bucket8", "one-bucket", "unfolded", "sdpa"],
)
def test_fast_path_matches_standard_forward(model_and_batch, cfg):
    model, b = model_and_batch
    args = (b["pf_features"], b["pf_vectors"], b["pf_mask"])
    lengths = b["pf_mask"].sum(dim=(1, 2))
    assert lengths.min() < lengths.max()  # real jets: multiplicities differ, so bucketing changes the padding
    with torch.inference_mode():
        expected = model(*args)
        got = FastParT(model, cfg)(*args)
    assert (got - expected).abs().max().item() <= SOFTMAX_TOL


def test_option_routes_eval_forward_through_fast_path(model_and_batch):
    model, b = model_and_batch
    fast_model = ParticleTransformer(part_config(input_dim=17, num_classes=10, num_layers=3, for_inference=True,
                                                inference_path="bucketed")).eval()
    fast_model.load_state_dict(model.state_dict())
    args = (b["pf_features"], b["pf_vectors"], b["pf_mask"])
    with torch.inference_mode():
        assert (fast_model(*args) - model(*args)).abs().max().item() <= SOFTMAX_TOL


def test_particle_order_does_not_matter(model_and_batch):
    """Padding in the middle of a jet is packed away; ParT is permutation invariant, so outputs agree."""
    model, b = model_and_batch
    x, v, m = b["pf_features"][:16], b["pf_vectors"][:16], b["pf_mask"][:16]
    perm = torch.randperm(x.size(-1), generator=torch.Generator().manual_seed(5))
    xp, vp, mp = x[..., perm], v[..., perm], m[..., perm]
    packed_x, _, packed_m = pack_real_first(xp, vp, mp)
    assert torch.equal(packed_m, m.bool())
    with torch.inference_mode():
        assert (FastParT(model)(xp, vp, mp) - model(x, v, m)).abs().max().item() <= SOFTMAX_TOL


def test_default_cpu_engine_runs_bmm_attention_with_the_padding_merged_once(model_and_batch):
    model, b = model_and_batch
    args = (b["pf_features"][:16], b["pf_vectors"][:16], b["pf_mask"][:16])
    with torch.inference_mode(), torch.profiler.profile() as prof:
        FastParT(model)(*args)
    names = {event.key for event in prof.key_averages()}
    assert "aten::baddbmm" in names  # bmm core on the particle blocks
    ctx = FastParT(model)._context(torch.device("cpu"))
    assert ctx.backend == "bmm" and ctx.merged_padding
    assert next(iter(model.blocks)).attn.core.backend == "sdpa"  # the model's own backend is left as it was


def _small_part(seed: int) -> ParticleTransformer:
    """A small ParT (one block of each kind, narrow): compiling it takes seconds, not half a minute."""
    torch.manual_seed(seed)
    model = ParticleTransformer(part_config(input_dim=17, num_classes=10, num_layers=1, num_cls_layers=1,
                                            embed_dims=(32, 32), pair_embed_dims=(16, 16), num_heads=4,
                                            for_inference=True)).eval()
    _randomise_batchnorms(model)
    return model


def test_compiled_engine_equals_the_standard_forward_and_follows_new_weights(model_and_batch):
    """torch.compile with frozen weights (fp32): within 1e-5 of the standard forward. The engine is cached, and
    rebuilt when the weights change in place, so frozen constants never go stale."""
    _, b = model_and_batch
    model = _small_part(seed=4)
    args = (b["pf_features"][:40], b["pf_vectors"][:40], b["pf_mask"][:40])
    cfg = FastInferenceConfig(bucket_size=8, compile=True)
    with torch.inference_mode():
        engine = engine_for(model, cfg)
        assert engine_for(model, cfg) is engine
        assert (engine(*args) - model(*args)).abs().max().item() <= SOFTMAX_TOL
    model.load_state_dict(_small_part(seed=5).state_dict())
    with torch.inference_mode():
        rebuilt = engine_for(model, cfg)
        assert rebuilt is not engine
        assert (rebuilt(*args) - model(*args)).abs().max().item() <= SOFTMAX_TOL


@pytest.mark.slow
def test_compiled_bf16_engine_stays_close(model_and_batch):
    """The compiled bf16 engine, as the eager one: close to fp32 (trained-weights agreement: profiling.bench)."""
    model, b = model_and_batch
    args = (b["pf_features"][:32], b["pf_vectors"][:32], b["pf_mask"][:32])
    with torch.inference_mode():
        got = FastParT(model, FastInferenceConfig(dtype="bf16", compile=True))(*args)
        expected = model(*args)
    assert (got - expected).abs().max().item() <= 0.05


def test_folding_conv_batchnorm_is_exact():
    torch.manual_seed(2)
    seq = nn.Sequential(nn.BatchNorm1d(4), nn.Conv1d(4, 16, 1), nn.BatchNorm1d(16), nn.GELU(), nn.Conv1d(16, 8, 1),
                        nn.BatchNorm1d(8))
    _randomise_batchnorms(seq)
    seq.eval()
    folded = nn.Sequential(*_fold_conv_bn(seq))
    assert [type(m) for m in folded] == [FoldedLinear, nn.GELU, FoldedLinear]  # nn.Linear with given weights
    x = torch.randn(50, 4)
    with torch.no_grad():
        expected = seq(x.T.unsqueeze(0)).squeeze(0).T
        assert torch.allclose(folded(x), expected, atol=1e-5, rtol=1e-5)


def test_bf16_path_stays_close(model_and_batch):
    """bf16 weights and activations: outputs close to fp32 (the trained-weights agreement is in profiling.bench)."""
    model, b = model_and_batch
    args = (b["pf_features"][:32], b["pf_vectors"][:32], b["pf_mask"][:32])
    with torch.inference_mode():
        got = FastParT(model, FastInferenceConfig(dtype="bf16"))(*args)
        expected = model(*args)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= 0.05
    assert next(model.parameters()).dtype == torch.float32  # the bf16 copy leaves the original untouched


def test_folded_pair_bias_matches_weaver_pair_embed(jet_files):
    """Every real pair of every jet: the folded embedding equals weaver's PairEmbed (sparse eval) bias.

    ln m^2 of nearly collinear massless pairs cancels catastrophically, so this also checks that the kinematics
    are evaluated with weaver's reduction order.
    """
    from weaver_ext.fast_inference import FoldedPairEmbed

    torch.manual_seed(4)
    model = ParticleTransformer(part_config(input_dim=17, num_classes=10, num_layers=1)).eval()
    _randomise_batchnorms(model)
    b = weaver_batch(jet_files, JETCLASS_CONFIGS / "JetClass_full.yaml", max_jets=400)
    keep = int(b["pf_mask"].sum(dim=(1, 2)).max())
    v, mask = b["pf_vectors"][..., :keep], b["pf_mask"][..., :keep].bool()
    with torch.inference_mode():
        expected = model.pair_embed(v, mask=mask)
        got = FoldedPairEmbed(model.pair_embed)(v, mask)
        padded_rows = FoldedPairEmbed(model.pair_embed, row_multiple=4096)(v, mask)  # as compiled engines run it
    assert (got - expected).abs().max().item() <= 1e-5
    assert torch.equal(padded_rows, got)  # dummy pairs land in the spare row only


def test_compiled_shapes_are_equal_groups_and_rounded_lengths(model_and_batch):
    """The group shapes of a compiled engine: equal jet counts by multiplicity, lengths rounded up to 8."""
    _, b = model_and_batch
    lengths = b["pf_mask"].sum(dim=(1, 2))[:90]
    groups = group_indices(lengths, 16, CompiledShapes())
    assert [len(g) for g in groups] == [16] * 5 + [10]
    assert torch.equal(torch.cat(groups).sort().values, torch.arange(90))
    assert all(lengths[g].max() <= lengths[h].min() for g, h in zip(groups[:-1], groups[1:], strict=True))  # sorted
    assert [group_length(n, 128, CompiledShapes()) for n in (1, 8, 9, 123, 128)] == [8, 8, 16, 128, 128]
    assert group_length(9, 128) == 9  # eager engines: the longest jet


@pytest.mark.parametrize("dtype,kernel", [("fp32", True), ("fp32", False), ("bf16", False)],
                         ids=["fp32-kernel", "fp32-bmm", "bf16-bmm"])
def test_packed_layout_matches_standard_forward(model_and_batch, dtype, kernel, monkeypatch):
    """The packed layout (one token matrix per chunk, attention per jet) eagerly: fp32 within 1e-5 of the standard
    forward through the fused C++ kernel and through the batched-matmul fallback (the kernel switched off), bf16
    within the bf16 tolerance. Small chunks, groups and pair chunks, so several of each run."""
    import weaver_ext.grouped as grouped
    from weaver_ext.native import grouped_attention_library
    from weaver_ext.packed import PackedShapes

    if kernel and grouped_attention_library() is None:
        pytest.skip("no C++ compiler: the fused kernel is not built here")
    if not kernel:
        monkeypatch.setattr(grouped, "fused_grouped_attention", lambda *args, **kwargs: None)
        monkeypatch.setattr(grouped, "fused_class_attention", lambda *args, **kwargs: None)
    model, b = model_and_batch
    args = (b["pf_features"], b["pf_vectors"], b["pf_mask"])
    engine = FastParT(model, FastInferenceConfig(layout="packed", dtype=dtype))
    engine.packed_shapes = PackedShapes(chunk_jets=40, group_jets=8, row_multiple=128, pair_chunk_rows=1000)
    with torch.inference_mode():
        got, expected = engine(*args), model(*args)
    assert engine.packed
    assert (got - expected).abs().max().item() <= (SOFTMAX_TOL if dtype == "fp32" else 0.05)


def test_packed_layout_keeps_jets_without_particles_finite(model_and_batch):
    """A jet without particles is left unmasked (as in the grouped path), so its outputs are finite and equal."""
    model, b = model_and_batch
    x, v, m = b["pf_features"][:12].clone(), b["pf_vectors"][:12].clone(), b["pf_mask"][:12].clone()
    m[3] = 0
    with torch.inference_mode():
        packed = FastParT(model, FastInferenceConfig(layout="packed"))(x, v, m)
        grouped = FastParT(model, FastInferenceConfig(layout="groups"))(x, v, m)
    assert torch.isfinite(packed).all()
    assert (packed - grouped).abs().max().item() <= SOFTMAX_TOL


def test_pack_batch_lays_groups_out_as_rows(model_and_batch):
    """Rows: each group jets x its own longest length, zero rows up to the multiple; each jet's first pair row points
    at its own block of ``real_pairs``."""
    from weaver_ext.packed import pack_batch

    _, b = model_and_batch
    x, v, m = b["pf_features"][:30], b["pf_vectors"][:30], b["pf_mask"][:30]
    lengths = m.sum(dim=(1, 2)).long()
    batch = pack_batch(x, v, m, bucket_size=8, row_multiple=64)
    rows = int(sum(jets * length for _, jets, length, _ in batch.groups.tolist()))
    assert batch.features.shape[-1] == -(-rows // 64) * 64 and not batch.mask[0, 0, rows:].any()
    assert int(batch.mask.sum()) == int(lengths.sum())
    assert torch.equal(batch.order.sort().values, torch.arange(30))
    assert torch.equal(batch.jets[:, 1], lengths[batch.order])
    for _, jets, length, first_jet in batch.groups.tolist():
        assert length == int(lengths[batch.order[first_jet:first_jet + jets]].max())
    for jet, (pair_row, particles) in zip(batch.order.tolist(), batch.jets.tolist(), strict=True):
        count = particles * (particles + 1) // 2
        assert torch.equal(batch.pairs.b[pair_row:pair_row + count], torch.full((count,), jet))


def test_compiled_packed_engine_equals_the_standard_forward(model_and_batch):
    """The compiled fp32 engine runs the packed layout by default: within 1e-5 of the standard forward."""
    _, b = model_and_batch
    model = _small_part(seed=6)
    args = (b["pf_features"][:40], b["pf_vectors"][:40], b["pf_mask"][:40])
    with torch.inference_mode():
        engine = FastParT(model, FastInferenceConfig(compile=True))
        assert engine.packed
        assert (engine(*args) - model(*args)).abs().max().item() <= SOFTMAX_TOL


def test_packed_layout_refuses_models_it_cannot_run():
    torch.manual_seed(0)
    model = ParticleTransformer(part_config(input_dim=17, num_classes=10, num_layers=1, num_cls_layers=1,
                                            embed_dims=(32, 32), pair_embed_dims=(16, 16), num_heads=4,
                                            num_registers=2)).eval()
    with pytest.raises(ValueError, match="layout='packed'"):
        FastParT(model, FastInferenceConfig(layout="packed"))
    assert not FastParT(model, FastInferenceConfig(compile=False)).packed
