"""Our ParT loads weaver-core 0.5.3's ParticleTransformer state_dict and reproduces its outputs on real jets.

Two references:
- the **published recipe**: weaver-core's ParT built with every argument that the particle_transformer repository's
  ``networks/example_ParticleTransformer.py`` passes to it (the recipe behind the published ParT checkpoints);
  our ParT is built through ``networks/part.py`` with *default options*, so a published checkpoint needs none;
- weaver-core's **class defaults** (``use_pre_activation_pair=True``), reached with ``-o use_pre_activation_pair True``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer as WeaverParT

from profiling.loading import build_model, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import weaver_batch
from weaver_ext.attention import set_attention_backend
from weaver_ext.part import ParticleTransformer
from weaver_ext.part_config import part_config

# max |difference of softmax|. Both sides run the same fp32 ops in the same order except the attention core
# (weaver-core: nn.MultiheadAttention; ours: SDPA or the math backend), whose summation order differs; measured
# differences are ~1e-7 on AVX2 and AVX-512 kernels alike, so 1e-5 leaves two orders of magnitude for other CPUs.
SOFTMAX_TOL = 1e-5


def published_recipe_kwargs(data_config: Any) -> dict[str, Any]:
    """Every argument ``example_ParticleTransformer.get_model`` gives weaver-core's ParT (its defaults, no -o)."""
    return dict(
        input_dim=len(data_config.input_dicts["pf_features"]), num_classes=len(data_config.label_value),
        pair_input_dim=4, use_pre_activation_pair=False, embed_dims=[128, 512, 128], pair_embed_dims=[64, 64, 64],
        num_heads=8, num_layers=8, num_cls_layers=2, block_params=None,
        cls_block_params={"dropout": 0, "attn_dropout": 0, "activation_dropout": 0}, fc_params=[],
        activation="gelu", trim=True, for_inference=False,
    )


def _pair(input_dim: int, *, for_inference: bool) -> tuple[torch.nn.Module, ParticleTransformer]:
    """weaver-core's class defaults against ours with ``use_pre_activation_pair=True``."""
    torch.manual_seed(7)
    reference = WeaverParT(input_dim=input_dim, num_classes=10, fc_params=[], version=1, for_inference=for_inference)
    ours = ParticleTransformer(part_config(input_dim=input_dim, num_classes=10, for_inference=for_inference,
                                          use_pre_activation_pair=True))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.parametrize("layout", ["full", "kin"])
@pytest.mark.parametrize("for_inference", [True, False], ids=["export", "predict"])
def test_default_options_reproduce_the_published_recipe(jet_files, layout, for_inference):
    """networks/part.py with no options == weaver-core's ParT as the published recipe builds it, same weights."""
    dc_path = JETCLASS_CONFIGS / f"JetClass_{layout}.yaml"
    data_config = load_data_config(dc_path)
    torch.manual_seed(11)
    reference = WeaverParT(**{**published_recipe_kwargs(data_config), "for_inference": for_inference}).eval()
    ours, info = build_model(REPO_ROOT / "networks" / "part.py", data_config, for_inference=for_inference)
    ours.load_state_dict({f"mod.{k}": v for k, v in reference.state_dict().items()}, strict=True)
    ours.eval()
    batch = weaver_batch(jet_files, dc_path, max_jets=80)
    with torch.inference_mode():
        for _ in range(6 if not for_inference else 1):  # --predict path: past the trimmer's 5 warm-up calls
            expected = reference(batch["pf_features"], v=batch["pf_vectors"], mask=batch["pf_mask"])
            got = ours(*(batch[k] for k in info["input_names"]))
    if not for_inference:
        expected, got = expected.softmax(1), got.softmax(1)
    assert torch.allclose(expected.sum(1), torch.ones(len(expected)), atol=1e-5)
    assert (got - expected).abs().max().item() <= SOFTMAX_TOL


def test_class_default_layout_differs_from_the_recipe(jet_files):
    """The two layouts share a state_dict but not outputs: the option really matters (why the default is False)."""
    data_config = load_data_config(JETCLASS_CONFIGS / "JetClass_kin.yaml")
    torch.manual_seed(3)
    recipe = WeaverParT(**{**published_recipe_kwargs(data_config), "for_inference": True}).eval()
    class_default = WeaverParT(**{**published_recipe_kwargs(data_config), "for_inference": True,
                                  "use_pre_activation_pair": True}).eval()
    class_default.load_state_dict(recipe.state_dict(), strict=True)
    batch = weaver_batch(jet_files, JETCLASS_CONFIGS / "JetClass_kin.yaml", max_jets=40)
    args = (batch["pf_features"], batch["pf_vectors"], batch["pf_mask"])
    with torch.inference_mode():
        assert (recipe(*args) - class_default(*args)).abs().max().item() > 100 * SOFTMAX_TOL


@pytest.mark.parametrize("layout,input_dim", [("full", 17), ("kin", 7)])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_softmax_matches_weaver_core_class_defaults(jet_files, layout, input_dim, backend):
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
