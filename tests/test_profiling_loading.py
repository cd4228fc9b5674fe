"""Model/weights/inputs loading as weaver does it, and the one-line errors for bad user input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from profiling import loading
from tests.conftest import SHARED_MODELS
from weaver_ext.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "data" / "JetClass"
PARTICLENET = REPO / "networks" / "particlenet.py"
WEIGHTS = SHARED_MODELS


def test_parse_network_options_like_weaver() -> None:
    opts = loading.parse_network_options([["conv_params", "[(16, (64, 64))]"], ["attn_backend", "'sdpa'"]])
    assert opts == {"conv_params": [(16, (64, 64))], "attn_backend": "sdpa"}
    with pytest.raises(ValueError, match="attn_backend.*inner quotes"):
        loading.parse_network_options([["attn_backend", "sdpa"]])


@pytest.mark.parametrize("variant", ["kin", "kinpid", "full"])
def test_published_particlenet_weights_load_strictly(variant: str) -> None:
    path = WEIGHTS / f"ParticleNet_{variant}.pt"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    dc = loading.load_data_config(CONFIGS / f"JetClass_{variant}.yaml")
    lm = loading.load_model(PARTICLENET, dc, weights=path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in lm.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert loading.count_parameters(lm.model) == sum(v.numel() for k, v in state.items()
                                                     if not k.endswith(("running_mean", "running_var", "tracked")))


def test_bad_weights_name_the_first_bad_key(tmp_path: Path) -> None:
    dc = loading.load_data_config(CONFIGS / "JetClass_kin.yaml")
    model, _ = loading.build_model(PARTICLENET, dc)
    state = model.state_dict()
    renamed = dict(state)
    renamed["mod.extra.weight"] = renamed.pop("mod.fc.1.bias")
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"missing key 'mod.fc.1.bias'"):
        loading.load_weights(model, tmp_path / "renamed.pt")
    shaped = dict(state)
    shaped["mod.fc.1.weight"] = torch.zeros(3, 256)
    torch.save(shaped, tmp_path / "shaped.pt")
    with pytest.raises(CheckpointError, match=r"key 'mod.fc.1.weight' has shape \(3, 256\)"):
        loading.load_weights(model, tmp_path / "shaped.pt")
    # kin weights into the full-feature model: the first conv sees 17 instead of 7 features
    full = loading.load_data_config(CONFIGS / "JetClass_full.yaml")
    with pytest.raises(CheckpointError, match="key 'mod.bn_fts.weight' has shape"):
        loading.load_model(PARTICLENET, full, weights=WEIGHTS / "ParticleNet_kin.pt")


def test_particlenet_network_config_options() -> None:
    dc = loading.load_data_config(CONFIGS / "JetClass_kin.yaml")
    with pytest.raises(ValueError, match="particlenet.py: unknown option 'bogus'; valid options are: conv_params"):
        loading.build_model(PARTICLENET, dc, options={"bogus": 1})
    model, info = loading.build_model(PARTICLENET, dc, options={"conv_params": [(4, (8, 8))], "use_fusion": True})
    assert info["input_names"] == ["pf_points", "pf_features", "pf_vectors", "pf_mask"]
    assert info["dynamic_axes"]["pf_points"] == {0: "N", 2: "n_pf"}
    assert model.mod.use_fusion and len(model.mod.edge_convs) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"--device cuda requested but torch.cuda.is_available\(\) is False"):
        loading.check_device("cuda")
    with pytest.raises(ValueError, match="--device must be"):
        loading.check_device("tpu")


def test_synthetic_inputs_are_physical() -> None:
    dc = loading.load_data_config(CONFIGS / "JetClass_full.yaml")
    x = loading.synthetic_inputs(dc, batch_size=6, multiplicity=(10, 40), seed=3)
    assert x["pf_features"].shape == (6, 17, 128) and x["pf_vectors"].shape == (6, 4, 128)
    counts = x["pf_mask"].sum(dim=(1, 2))
    assert ((counts >= 10) & (counts <= 40)).all()
    v = x["pf_vectors"]
    mass2 = v[:, 3] ** 2 - (v[:, :3] ** 2).sum(dim=1)
    assert (mass2 > -1e-2 * v[:, 3] ** 2).all()  # massless particles: E = |p|
    pt = torch.hypot(v[:, 0], v[:, 1]) * x["pf_mask"][:, 0]
    assert ((pt.sum(dim=1) > 450) & (pt.sum(dim=1) < 1100)).all()  # JetClass pT window
    # standardised features are clipped like weaver does ([-5, 5] by default)
    assert x["pf_features"].abs().max() <= 5.0
    fixed = loading.synthetic_inputs(dc, batch_size=2, multiplicity=16, length=16)
    assert fixed["pf_mask"].shape == (2, 1, 16) and bool(fixed["pf_mask"].all())


def test_synthetic_hits_follow_the_tracks_layout() -> None:
    tracks = loading.load_data_config(REPO / "data" / "Tracks" / "tracks.yaml")
    x = loading.synthetic_hits(batch_size=5, length=32, hits=(16, 32), seed=2)
    assert list(x) == list(tracks.input_names)
    assert x["hit_points"].shape == (5, 4, 32) and x["hit_features"].shape == (5, 5, 32)
    n_real = x["hit_mask"].sum(dim=(1, 2))
    assert ((n_real >= 16) & (n_real <= 32)).all()
    padded = x["hit_mask"] == 0
    assert (x["hit_points"].masked_select(padded) == 0).all() and (x["hit_features"].masked_select(padded) == 0).all()
    real = x["hit_points"][:, :3].norm(dim=1)[x["hit_mask"][:, 0] > 0]
    assert torch.allclose(real, torch.full_like(real, 1.1))  # PMTs on the sphere, in units of R
    assert bool(loading.synthetic_hits(batch_size=1, length=8)["hit_mask"].all())  # default: every slot real
    assert torch.equal(x["hit_features"], loading.synthetic_hits(batch_size=5, length=32, hits=(16, 32),
                                                                 seed=2)["hit_features"])
    with pytest.raises(ValueError, match="hits per event"):
        loading.synthetic_hits(batch_size=1, length=8, hits=9)


def test_import_network_config_errors(tmp_path: Path) -> None:
    assert hasattr(loading.import_network_config(PARTICLENET), "get_loss")
    with pytest.raises(FileNotFoundError, match="network config not found"):
        loading.import_network_config(tmp_path / "missing.py")
    (tmp_path / "no_model.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="has no get_model"):
        loading.import_network_config(tmp_path / "no_model.py")


def test_data_config_errors_are_one_config_error(tmp_path: Path) -> None:
    from data.check import ConfigError

    with pytest.raises(ConfigError, match="not found"):
        loading.load_data_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        loading.load_data_config(tmp_path / "list.yaml")


def test_real_inputs_through_weavers_dataset(jet_files: list[Path]) -> None:
    pool = loading.load_real_inputs(jet_files, CONFIGS / "JetClass_kin.yaml", max_jets=50)
    assert set(pool) == {"pf_points", "pf_features", "pf_vectors", "pf_mask"}
    assert pool["pf_features"].shape == (50, 7, 128)
    counts = pool["pf_mask"].sum(dim=(1, 2))
    assert (counts >= 1).all() and (counts <= 128).all()
    batch = loading.take_batch(pool, ["pf_points", "pf_mask"], 120)  # larger than the pool: cycles
    assert batch[0].shape == (120, 2, 128) and torch.equal(batch[1][50], batch[1][0])
    with pytest.raises(FileNotFoundError, match="matched no files"):
        loading.expand_input_files(str(jet_files[0].parent / "nothing*.root"))
