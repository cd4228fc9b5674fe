"""Every network config trains under 2-process DistributedDataParallel (gloo, CPU) wrapped as weaver-core 0.5.3 does.

weaver wraps with ``DistributedDataParallel(model, find_unused_parameters=False)``: a parameter without gradient in a
step makes DDP fail. One spawn (2 ranks) runs all cases in sequence; each case trains 2 AdamW steps on different
random-but-valid data per rank, then we check gradients and cross-rank parameter equality. weaver also converts
BatchNorm to SyncBatchNorm first; SyncBatchNorm's training forward needs CUDA, so the cases run without the
conversion and one case shows the CPU error (see docs/reliability.md).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from profiling import loading
from tests.ddp_check import DDPCase, DDPResult, run_ddp_check
from tests.helpers import discover_networks, family_setup

REPO_ROOT = Path(__file__).resolve().parents[1]

KIN = "data/JetClass/JetClass_kin.yaml"
TRACKS = "data/Tracks/tracks.yaml"
TINY = {"num_layers": 2, "num_cls_layers": 1, "embed_dims": (16, 16), "pair_embed_dims": (8,), "num_heads": 2}
TINY_TRACK = {"embed_dims": (16, 16), "pair_embed_dims": (8,), "num_heads": 2, "num_layers": 1, "num_cls_layers": 1,
              "max_hits": 24}

# every network config in networks/ with its family's small options (found by listing the folder), every attention
# kind through networks/part.py, then the option combinations that once broke DDP
DISCOVERED = [DDPCase(network[:-3], f"networks/{network}", str(family_setup(network)[1].relative_to(REPO_ROOT)),
                      family_setup(network)[2], inputs="tracks" if family_setup(network)[0] == "tracks" else "jets")
              for network in discover_networks()]
KINDS = [DDPCase(f"part_{kind}", "networks/part.py", KIN, {**TINY, "attention": kind, "sparsity_ratio": 0.5})
         for kind in ("differential", "dsa_topk", "dsa_indexer")]
CASES = [
    *DISCOVERED,
    *KINDS,
    DDPCase("dsa_topk", "networks/dsa_part.py", KIN,
            {**TINY, "dsa_enabled": True, "dsa_mode": "topk", "sparsity_ratio": 0.25}),
    DDPCase("dsa_indexer", "networks/dsa_part.py", KIN,
            {**TINY, "dsa_enabled": True, "dsa_mode": "indexer", "sparsity_ratio": 0.5, "target_sparsity": 0.25,
             "sparsity_schedule": "linear", "sparsity_steps": 2}),
    DDPCase("dsa_indexer_sparsity_only", "networks/dsa_part.py", KIN,
            {**TINY, "dsa_enabled": True, "dsa_mode": "indexer", "sparsity_ratio": 0.5, "distill_weight": 0.0,
             "sparsity_weight": 1.0}),
    DDPCase("dsa_differential_maps", "networks/dsa_part.py", KIN,
            {**TINY, "dsa_mode": "indexer", "dsa_maps": "differential", "sparsity_ratio": 0.5}),
    DDPCase("transformer_refinements", "networks/transformer.py", KIN,
            {**TINY, "value_residual": True, "num_registers": 2, "latent_tokens": 4}),
    DDPCase("transformer_differential", "networks/transformer.py", KIN,
            {**TINY, "attention": "differential", "attn_knn": 4, "head": "latent", "head_queries": 2}),
    DDPCase("transformer_no_pair_bias", "networks/transformer.py", KIN, {**TINY, "pair_bias": False}),
    DDPCase("particlenet_two_blocks", "networks/particlenet.py", KIN,
            {"conv_params": [(4, (16, 16)), (4, (16, 16))], "fc_params": [(16, 0.1)]}),
    DDPCase("track_transformer_dsa_latent", "networks/track_transformer.py", TRACKS,
            {**TINY_TRACK, "attention": "dsa", "topk": 8, "latent_tokens": 4, "latent_layers": 1}, inputs="tracks"),
    DDPCase("part_syncbn", "networks/part.py", KIN, TINY, sync_batchnorm=True),
]
NEGATIVE_CONFIG = '''
"""ParT plus one parameter that the forward never uses: must fail under DDP with find_unused_parameters=False."""
import torch
from weaver_ext.network import build_part_tagger


def get_model(data_config, **kwargs):
    model, info = build_part_tagger(data_config, kwargs, where="unused_param.py")
    model.unused = torch.nn.Linear(2, 2)
    return model, info


def get_loss(data_config, **kwargs):
    return torch.nn.CrossEntropyLoss()
'''


XFAIL: dict[str, str] = {}  # case name -> reason, for known bugs (xfail strict)


def _case_params() -> list:
    return [pytest.param(c.name, marks=pytest.mark.xfail(strict=True, reason=XFAIL[c.name])) if c.name in XFAIL
            else c.name for c in CASES if not c.sync_batchnorm]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> dict[str, DDPResult]:
    """All cases (plus the negative control) in one 2-process spawn."""
    tmp = tmp_path_factory.mktemp("ddp")
    negative = tmp / "unused_param.py"
    negative.write_text(textwrap.dedent(NEGATIVE_CONFIG))
    cases = [*CASES, DDPCase("negative_unused_param", str(negative), KIN, TINY)]
    results = run_ddp_check(cases, world_size=2, steps=2, batch_size=8, work_dir=tmp)
    return {r.name: r for r in results}


@pytest.mark.parametrize("name", _case_params())
def test_network_trains_under_ddp_with_identical_parameters(ddp_results, name):
    res = ddp_results[name]
    assert res.error == "", res.error
    assert res.steps == 2 and res.num_params > 0
    assert res.missing_grad == [], f"parameters without gradient (DDP find_unused_parameters=False fails): " \
                                   f"{res.missing_grad[:5]}"
    assert res.params_changed
    assert res.max_param_diff == 0.0  # gloo all-reduce: bitwise identical parameters on both ranks
    assert res.ok


def test_syncbatchnorm_conversion_needs_cuda(ddp_results):
    """weaver's convert_sync_batchnorm + DDP: on CPU, DDP's constructor refuses SyncBatchNorm (documented)."""
    res = ddp_results["part_syncbn"]
    assert not res.ok
    assert "SyncBatchNorm layers only work with GPU modules" in res.error


def test_unused_parameter_is_detected(ddp_results):
    """Negative control: the check fails for a model with a parameter the forward never touches."""
    res = ddp_results["negative_unused_param"]
    assert not res.ok
    assert "unused.weight" in res.missing_grad or "unused" in res.error or "reduction" in res.error


def test_world_size_one_is_refused():
    with pytest.raises(ValueError, match="world_size"):
        run_ddp_check(CASES[:1], world_size=1)


def test_indexer_without_any_aux_term_is_rejected():
    """No distillation and no sparsity term: the indexer would get no gradient (never trains, breaks DDP)."""
    network = loading.import_network_config(REPO_ROOT / "networks" / "dsa_part.py", name="_ddp_test_dsa_network")
    data_config = loading.load_data_config(REPO_ROOT / KIN)
    with pytest.raises(ValueError, match="indexer gets no gradient"):
        network.get_model(data_config, **TINY, dsa_enabled=True, dsa_mode="indexer", distill_weight=0.0,
                          sparsity_weight=0.0)
