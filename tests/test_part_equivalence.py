"""Our ParT loads weaver-core 0.5.3's ParticleTransformer state_dict and reproduces its outputs on real jets."""

from __future__ import annotations

import pytest
import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer as WeaverParT

from tests.conftest import JETCLASS_CONFIGS
from tests.helpers import weaver_batch
from weaver_ext.attention import set_attention_backend
from weaver_ext.part import ParTConfig, ParticleTransformer

SOFTMAX_TOL = 1e-5  # the bound on max |difference of softmax|


def _pair(input_dim: int, *, for_inference: bool) -> tuple[torch.nn.Module, ParticleTransformer]:
    torch.manual_seed(7)
    reference = WeaverParT(input_dim=input_dim, num_classes=10, fc_params=[], version=1, for_inference=for_inference)
    ours = ParticleTransformer(ParTConfig(input_dim=input_dim, num_classes=10, for_inference=for_inference))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.parametrize("layout,input_dim", [("full", 17), ("kin", 7)])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_softmax_matches_weaver_core(jet_files, layout, input_dim, backend):
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / f"JetClass_{layout}.yaml", max_jets=60)
    assert batch["pf_features"].shape[1] == input_dim
    reference, ours = _pair(input_dim, for_inference=True)
    set_attention_backend(ours, backend)
    args = (batch["pf_features"], batch["pf_vectors"], batch["pf_mask"])
    with torch.inference_mode():
        expected, got = reference(*args), ours(*args)
    assert expected.shape == (len(batch["_label_"]), 10)
    assert torch.allclose(expected.sum(1), torch.ones(len(expected)), atol=1e-5)
    assert (got - expected).abs().max().item() <= SOFTMAX_TOL


def test_trimmed_eval_matches_weaver_core(jet_files):
    """weaver --predict path (for_inference=False): the trimmer cuts padding after its 5 warm-up calls."""
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / "JetClass_kin.yaml", max_jets=64)
    reference, ours = _pair(7, for_inference=False)
    args = (batch["pf_features"], batch["pf_vectors"], batch["pf_mask"])
    with torch.inference_mode():
        for _ in range(6):  # past the trimmer's warm-up so both really trim
            expected, got = reference(*args).softmax(1), ours(*args).softmax(1)
    assert int(ours.trimmer._counter) == 5
    assert (got - expected).abs().max().item() <= SOFTMAX_TOL


def test_parameter_count_matches_weaver_core():
    reference, ours = _pair(7, for_inference=False)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
