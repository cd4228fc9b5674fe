"""The attention-kind registry: every kind in every ParT-family network config, kinds composed with maps, backends
honoured by sparse kinds, FLOPs counted per kind, options of earlier versions, and a kind registered from outside.

Equivalence tolerances: 1e-5 absolute in fp32 (the paths differ only in summation order; observed ~1e-7).
"""

from __future__ import annotations

import pytest
import torch

from profiling.flops import count_flops
from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import discover_networks
from tests.kinds.scaled_softmax import ScaledSoftmaxCore
from weaver_ext.attention import DenseCore
from weaver_ext.attention_kinds import ATTENTION_KINDS, AttentionKind, get_attention_kind, register_attention_kind
from weaver_ext.config import OptionError
from weaver_ext.dsa import IndexerCore, TopkCore
from weaver_ext.losses import AuxLoss
from weaver_ext.maps import DifferentialMaps
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config

ATOL = 1e-5
TINY = dict(input_dim=7, num_classes=4, embed_dims=(16, 16), pair_embed_dims=(8,), num_heads=2, num_layers=2,
            num_cls_layers=1, trim=False, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)
TINY_OPTIONS = dict(embed_dims=[16, 16], pair_embed_dims=[8], num_heads=2, num_layers=2, num_cls_layers=1)
KINDS = ["softmax", "differential", "dsa_topk", "dsa_indexer"]


def _jets(n: int = 4, length: int = 24, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, length, generator=g) * 20
    v = torch.cat((p, p.norm(dim=1, keepdim=True) + 0.1), dim=1)
    n_real = torch.tensor([length, 17, 9, 3])[:n]
    mask = (torch.arange(length)[None] < n_real[:, None]).float().unsqueeze(1)
    return torch.randn(n, 7, length, generator=g) * mask, v * mask, mask


def _model(seed: int = 3, **options: object) -> ParticleTransformer:
    torch.manual_seed(seed)
    return ParticleTransformer(part_config(**{**TINY, **options}))


def test_registry_holds_the_four_kinds_and_rejects_unknown_names():
    assert set(KINDS) <= set(ATTENTION_KINDS)
    assert get_attention_kind("dsa_topk").sparse and not get_attention_kind("softmax").sparse
    with pytest.raises(OptionError, match="option 'attention': unknown kind 'sparse'; available: softmax"):
        part_config(**TINY, attention="sparse")
    with pytest.raises(ValueError, match="already registered"):
        register_attention_kind("softmax", ATTENTION_KINDS["softmax"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("network", discover_networks("part"))
def test_every_kind_runs_in_every_part_family_network_config(network, kind):
    """``-o attention NAME`` is one option of the whole family; every parameter trains (DDP needs that)."""
    module = import_network_config(REPO_ROOT / "networks" / network, name=f"_kinds_{network[:-3]}")
    data_config = load_data_config(JETCLASS_CONFIGS / "JetClass_kin.yaml")
    torch.manual_seed(0)
    model, info = module.get_model(data_config, attention=kind, sparsity_ratio=0.5, **TINY_OPTIONS)
    loss = module.get_loss(data_config).bind(model)
    core = model.mod.blocks[0].attn.core
    assert type(core) is {"softmax": DenseCore, "differential": DenseCore, "dsa_topk": TopkCore,
                          "dsa_indexer": IndexerCore}[kind]
    assert isinstance(core.maps, DifferentialMaps) == (kind == "differential")
    x, v, mask = _jets()
    points = torch.randn(4, 2, x.size(-1)) * mask
    model.train()
    out = model(points, x, v, mask)
    loss(out, torch.arange(4)).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == [] and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["topk", "indexer"])
def test_dsa_with_differential_maps_keeping_every_key_is_differential_attention(mode):
    """DSA with differential maps is a configuration; keeping all keys reproduces dense differential attention."""
    dense = _model(attention="differential", for_inference=True).eval()
    sparse = _model(attention="dsa", dsa_mode=mode, dsa_maps="differential", sparsity_ratio=1.0,
                    for_inference=True).eval()
    missing, unexpected = sparse.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all(k == "dsa_step" or ".indexer." in k for k in missing)
    assert isinstance(sparse.blocks[0].attn.core.maps, DifferentialMaps)
    with torch.no_grad():
        torch.testing.assert_close(sparse(*_jets()), dense(*_jets()), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["topk", "indexer"])
@pytest.mark.parametrize("maps", ["softmax", "differential"])
def test_sparse_kinds_honour_attn_backend(mode, maps):
    """The kept-key softmax through sdpa equals the explicit (math) path, outputs and auxiliary loss alike."""
    opts = dict(attention="dsa", dsa_mode=mode, dsa_maps=maps, sparsity_ratio=0.4, sparsity_weight=1.0,
                entropy_weight=0.1)
    reference = _model(attn_backend="math", **opts)
    through_sdpa = _model(attn_backend="sdpa", **opts)
    through_sdpa.load_state_dict(reference.state_dict())
    assert {m.backend for m in through_sdpa.modules() if isinstance(m, (TopkCore, IndexerCore))} == {"sdpa"}
    assert {m.backend for m in reference.modules() if isinstance(m, (TopkCore, IndexerCore))} == {"math"}
    with torch.no_grad():
        torch.testing.assert_close(through_sdpa.eval()(*_jets()), reference.eval()(*_jets()), atol=ATOL, rtol=0)
    outs, aux = [], []
    for model in (reference, through_sdpa):
        outs.append(model.train()(*_jets()))
        aux.append(model.pop_aux_loss())
    torch.testing.assert_close(outs[1], outs[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(aux[1], aux[0], atol=ATOL, rtol=0)


def test_sparse_kinds_default_to_math_and_dense_kinds_to_sdpa():
    model = _model(attention="dsa", attention_layers=(1,))
    assert model.blocks[0].attn.backend == "sdpa" and model.blocks[1].attn.backend == "math"
    assert model.cls_blocks[0].attn.backend == "sdpa"  # class blocks: softmax (sparse kinds are self-attention)


@pytest.mark.parametrize("legacy,current", [
    ({"dsa_enabled": True}, {"attention": "dsa"}),
    ({"dsa_enabled": True, "dsa_mode": "indexer"}, {"attention": "dsa_indexer"}),
    ({"dsa_enabled": False}, {"attention": "softmax"}),
    ({"dsa_enabled": True, "dsa_layers": (1,)}, {"attention": "dsa_topk", "attention_layers": (1,)}),
    ({"attention": "dense"}, {"attention": "softmax"}),
], ids=["dsa_enabled", "dsa_mode", "disabled", "dsa_layers", "dense"])
def test_options_of_earlier_versions_still_work(legacy, current):
    old, new = part_config(**TINY, **legacy), part_config(**TINY, **current)
    assert old.attn.kind == new.attn.kind and old.kind_layers == new.kind_layers
    assert old.sparse_layers == new.sparse_layers


def test_contradicting_old_and_new_options_name_the_new_form():
    with pytest.raises(OptionError, match="dsa_enabled=False contradicts attention='dsa'.*give -o attention only"):
        part_config(**TINY, dsa_enabled=False, attention="dsa")
    with pytest.raises(OptionError, match="give attention_layers only"):
        part_config(**TINY, dsa_layers=(0,), attention_layers=(1,))


def _core_flops(kind: str, length: int, **options: object) -> int:
    """Matmul FLOPs the profiler's counter attributes to the attention cores of a one-block model."""
    x, v, mask = _jets(n=1, length=length)
    model = _model(attention=kind, num_layers=1, num_cls_layers=0, **options).eval()
    report = count_flops(model, (x, v, torch.ones_like(mask)))
    return sum(f for name, f in report.by_type.items() if name in ("DenseCore", "TopkCore", "IndexerCore"))


def test_profiler_counts_each_kind_with_its_own_flops():
    """Each core reports its own work: differential maps 1.5x softmax's, top-k the dense products (selection scores
    reused), the indexer its block bounds + candidate scores and attention over the k kept keys only."""
    heads, dim, idim = 2, 8, 16  # TINY: 2 heads of 8; the indexer's default dimension
    n = 96
    dense = 2 * (heads * n * n) * (dim + dim)
    assert _core_flops("softmax", n) == dense
    assert _core_flops("differential", n) == 2 * (2 * heads * n * n) * (dim // 2 + dim)
    assert _core_flops("dsa_topk", n, topk=8) == dense
    n, k = 1024, 8  # two-stage selection: 8 blocks of 64 per query, bounds of all 16 blocks
    kept = 2 * (heads * n * k) * (dim + dim)
    indexer = 2 * (heads * n * (2 * 16 + 8 * 64)) * idim
    assert _core_flops("dsa_indexer", n, topk=k) == kept + indexer
    assert kept + indexer < 2 * (heads * n * n) * (dim + dim) * 0.6  # about half of dense attention at N = 1024


def test_a_kind_registered_from_outside_builds_and_trains():
    """The walk-through of docs/ARCHITECTURE.md: one file (tests/kinds/scaled_softmax.py) and one registry line."""
    kind = get_attention_kind("scaled_softmax")  # registered by importing tests/kinds/scaled_softmax.py
    assert isinstance(kind, AttentionKind)
    model = _model(attention="scaled_softmax")
    assert isinstance(model.blocks[0].attn.core, ScaledSoftmaxCore)
    reference = _model(attention="softmax")
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():  # the test kind halves the logits' temperature: a different, finite model
        got, plain = model.eval()(*_jets()), reference.eval()(*_jets())
    assert torch.isfinite(got).all() and not torch.allclose(got, plain)
    model.train()(*_jets()).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    loss = AuxLoss().bind(model)
    assert loss(model(*_jets()), torch.arange(4)).isfinite()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("network", discover_networks("tracks"))
def test_every_kind_runs_in_the_hit_model(network, kind):
    """The same option on detector hits: the track model is the same ParT with its own defaults and head."""
    module = import_network_config(REPO_ROOT / "networks" / network, name=f"_kinds_{network[:-3]}")
    data_config = load_data_config(REPO_ROOT / "data" / "Tracks" / "tracks.yaml")
    torch.manual_seed(0)
    options = dict(attention=kind, topk=4, embed_dims=[16, 16], pair_embed_dims=[8], num_heads=2, num_layers=2)
    model, _ = module.get_model(data_config, **options)
    loss = module.get_loss(data_config, **options).bind(model)
    assert type(model.mod.blocks[0].attn.core) is {"softmax": DenseCore, "differential": DenseCore,
                                                   "dsa_topk": TopkCore, "dsa_indexer": IndexerCore}[kind]
    g = torch.Generator().manual_seed(1)
    n_hits = torch.tensor([30, 22, 12])
    mask = (torch.arange(30)[None] < n_hits[:, None]).float().unsqueeze(1)
    points = torch.randn(3, 4, 30, generator=g) * mask
    features = torch.randn(3, len(data_config.input_dicts["hit_features"]), 30, generator=g) * mask
    target = torch.cat((torch.nn.functional.normalize(torch.randn(3, 3, generator=g), dim=1),) * 2, dim=1)
    model.train()
    loss(model(points, features, mask), target).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
