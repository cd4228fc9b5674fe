"""weaver-core's ParT versions 2, 3, 3.5 and 3.6 (and 1) through ``-o part_version``: same state_dict key for key,
same softmax on real generated jets, on the standard and the fast inference paths.

Reference: weaver-core 0.5.3's ``ParticleTransformer(version=V)`` built with the same sizes. "Briefly trained":
three AdamW steps of the reference on real jets (training mode: dropout, drop path, BatchNorm statistics), then
both models are compared in eval. Tolerance 1e-5 on the softmax (observed: 0 on the standard path, where both run
the same kernels in the same order; ~1e-7 on the fast path, which sums the pair embedding in another order).
"""

from __future__ import annotations

import pytest
import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer as WeaverParT

from tests.conftest import JETCLASS_CONFIGS
from tests.helpers import weaver_batch
from weaver_ext.fast_inference import FastParT
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import PART_VERSIONS, part_config

VERSIONS = sorted(PART_VERSIONS)
SIZES = dict(num_layers=2, embed_dims=[32, 32], pair_embed_dims=[16, 16], num_heads=4)
TOL = 1e-5


@pytest.fixture(scope="module", params=["kin", "full"])
def jets(request, jet_files):
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / f"JetClass_{request.param}.yaml", max_jets=64)
    return batch["pf_features"], batch["pf_vectors"], batch["pf_mask"]


def _pair(version: float, input_dim: int) -> tuple[torch.nn.Module, ParticleTransformer]:
    torch.manual_seed(int(version * 10))
    cls_layers = {} if version == 3.6 else {"num_cls_layers": 1}
    reference = WeaverParT(input_dim=input_dim, num_classes=10, fc_params=[], version=version, trim=False,
                           for_inference=True, **SIZES, **cls_layers)
    ours = ParticleTransformer(part_config(input_dim=input_dim, num_classes=10, part_version=version, trim=False,
                                           for_inference=True, use_pre_activation_pair=True,
                                           **{k: tuple(v) if isinstance(v, list) else v for k, v in SIZES.items()},
                                           **cls_layers))
    return reference, ours


def _train_briefly(model: torch.nn.Module, x, v, mask) -> None:
    """Three AdamW steps in training mode (logits: for_inference models output softmax, so use log of it)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    label = torch.arange(x.size(0)) % 10
    model.train()
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(model(x, v, mask) + 1e-9), label)
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v:g}")
def test_version_loads_weaver_state_dict_and_matches_its_softmax(jets, version, trained):
    x, v, mask = jets
    reference, ours = _pair(version, x.size(1))
    if trained:
        _train_briefly(reference, x, v, mask)
    reference.eval()
    assert list(ours.state_dict()) == list(reference.state_dict())  # key for key, in order
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval()
    with torch.no_grad():
        expected = reference(x, v, mask)
        standard = ours(x, v, mask)
        fast = FastParT(ours)(x, v, mask)
    assert (standard - expected).abs().max().item() <= TOL
    assert (fast - expected).abs().max().item() <= TOL
    assert torch.allclose(expected.sum(1), torch.ones(len(x)), atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v:g}")
def test_version_sets_the_documented_switches(version):
    cfg = part_config(input_dim=7, num_classes=4, part_version=version)
    b = cfg.blocks
    assert (b.ffn_activation == "swiglu") == (version >= 2) and b.block_scales == (version < 2)
    assert (b.norm == "rmsnorm") == (version >= 3) and b.bias == (version < 3)
    assert b.qk_norm == b.attn_gate == (version >= 3.5)
    assert cfg.head.global_token == (version == 3.6) and (b.num_cls_layers == 0) == (version == 3.6)
    explicit = part_config(input_dim=7, num_classes=4, part_version=version, dropout=0.2)
    assert explicit.blocks.dropout == 0.2  # an explicit option wins over the version's default


def test_unknown_version_is_one_line():
    with pytest.raises(ValueError, match="part_version' must be one of 1, 2, 3, 3.5, 3.6, got 4"):
        part_config(input_dim=7, num_classes=4, part_version=4)


@pytest.mark.parametrize("kind", ["differential", "dsa_topk", "dsa_indexer"])
def test_attention_kinds_run_on_version_3_5_blocks(kind):
    """QK-norm and the output gate belong to the skeleton, so every kind gets them (global token: not indexer)."""
    model = ParticleTransformer(part_config(input_dim=7, num_classes=4, part_version=3.5, attention=kind,
                                            sparsity_ratio=0.5, num_layers=2, embed_dims=(16, 16),
                                            pair_embed_dims=(8,), num_heads=2, num_cls_layers=1, trim=False))
    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, 3, 10, generator=g) * 20
    v = torch.cat((p, p.norm(dim=1, keepdim=True) + 0.1), 1)
    out = model.train()(torch.randn(2, 7, 10, generator=g), v, torch.ones(2, 1, 10))
    (out.sum() + (model.pop_aux_loss() or 0)).backward()
    assert model.blocks[0].attn.q_norm is not None and model.blocks[0].attn.gate_proj is not None
    assert all(p.grad is not None for p in model.parameters())
