"""networks/part.py in weaver's interface: option parsing, model_info, clear errors."""

from __future__ import annotations

import pytest
import torch
from weaver.utils.dataset import DataConfig

from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import discover_networks, network_family
from weaver_ext.config import OptionError

TINY = dict(num_layers=1, num_cls_layers=1, embed_dims=[32, 32], pair_embed_dims=[16], num_heads=2)


@pytest.fixture(scope="module")
def network():
    return import_network_config(REPO_ROOT / "networks" / "part.py", name="_test_part_network")


@pytest.fixture(scope="module")
def data_config():
    return load_data_config(JETCLASS_CONFIGS / "JetClass_full.yaml")


def test_get_model_accepts_weaver_injected_kwargs(network, data_config):
    model, info = network.get_model(data_config, for_inference=True, use_amp=True, compile_model=False, **TINY)
    assert info["input_names"] == ["pf_points", "pf_features", "pf_vectors", "pf_mask"]
    assert info["input_shapes"]["pf_features"] == (1, 17, 128)
    assert info["dynamic_axes"]["pf_features"] == {0: "N", 2: "n_pf"}
    assert info["output_names"] == ["softmax"]
    inputs = [torch.rand(info["input_shapes"][k]).repeat(3, 1, 1) for k in info["input_names"]]
    with torch.inference_mode():
        out = model.eval()(*inputs)
    assert out.shape == (3, 10)
    assert torch.allclose(out.sum(1), torch.ones(3))
    assert model.mod.cfg.blocks.num_layers == 1 and model.mod.cfg.embedding.embed_dims == (32, 32)


def test_every_config_field_is_an_option(network, data_config):
    model, _ = network.get_model(data_config, attn_backend="math", layer_scale_init=1e-5, ffn_activation="swiglu",
                                 fc_params=[(16, 0.1)], **TINY)
    blocks = model.mod.blocks
    assert blocks[0].attn.backend == "math"
    assert blocks[0].fc1_g is not None and torch.allclose(blocks[0].ls1.gamma, torch.full((32,), 1e-5))


def test_unknown_option_lists_valid_ones(network, data_config):
    with pytest.raises(OptionError, match=r"unknown option 'num_layer'.*valid options are: .*num_layers"):
        network.get_model(data_config, num_layer=3)


def test_derived_option_cannot_be_overridden(network, data_config):
    with pytest.raises(OptionError, match="unknown option 'input_dim'"):
        network.get_model(data_config, input_dim=3)


@pytest.mark.parametrize(
    "key,value,expect",
    [("num_layers", "8", "expects int"), ("trim", 1, "expects bool"), ("attn_backend", 3, "expects str"),
     ("embed_dims", 128, "expects tuple"), ("task", "segmentation", "expects 'classification' | 'regression'")],
)
def test_wrong_option_type_is_one_clear_line(network, data_config, key, value, expect):
    with pytest.raises(OptionError, match=f"option {key!r} {expect}"):
        network.get_model(data_config, **{key: value})


def test_unknown_attention_backend(network, data_config):
    with pytest.raises(ValueError, match="unknown attention backend 'fast'; available: math, sdpa"):
        network.get_model(data_config, attn_backend="fast", **TINY)


def test_wrong_data_config_is_rejected(network, tmp_path):
    text = (JETCLASS_CONFIGS / "JetClass_kin.yaml").read_text().replace("pf_vectors:", "pf_lorentz:")
    (tmp_path / "bad.yaml").write_text(text)
    bad = load_data_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match=r"data config inputs are .*pf_lorentz.*this network needs"):
        network.get_model(bad)


JC2_CONFIG = REPO_ROOT.parent / "shared" / "reference" / "jetclass2" / "JetClassII_full.yaml"
# every jet classifier in networks/ (the hit regression model has no classes)
CLASSIFIERS = [n for n in discover_networks() if network_family(REPO_ROOT / "networks" / n) != "tracks"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_num_classes_option(name, data_config):
    """-o num_classes: required for custom labels (JetClass-II), checked against simple labels."""
    net = import_network_config(REPO_ROOT / "networks" / name, name=f"_test_nc_{name[:-3]}")
    small = {} if network_family(REPO_ROOT / "networks" / name) != "part" else TINY
    custom = DataConfig.load(str(JC2_CONFIG), load_observers=False, load_reweight_info=False)
    model, _ = net.get_model(custom, num_classes=188, for_inference=True, **small)
    inputs = [torch.rand(2, len(custom.input_dicts[k]), 20) for k in custom.input_names]
    with torch.inference_mode():
        assert model.eval()(*inputs).shape == (2, 188)
    with pytest.raises(OptionError, match="custom labels .*pass -o num_classes N") as err:
        net.get_model(custom, **small)
    assert "\n" not in str(err.value) and name in str(err.value)
    model, _ = net.get_model(data_config, num_classes=10, for_inference=True, **small)  # agrees: fine
    with pytest.raises(OptionError, match="-o num_classes 5 contradicts the data config, whose simple labels "
                                          "define 10 classes"):
        net.get_model(data_config, num_classes=5, **small)
    with pytest.raises(OptionError, match="'num_classes' expects a positive int"):
        net.get_model(data_config, num_classes="10", **small)
