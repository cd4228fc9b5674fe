"""Bad inputs: what the network configs, the checkpoint loader, the profiler and weaver's data pipeline do today.

Each test records one row of the bad-input matrix in docs/reliability.md. Known bugs are ``xfail(strict=True)``
with the fix named in the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import uproot
import yaml
from weaver.utils.dataset import DataConfig
from weaver.utils.import_tools import import_module

from profiling.loading import load_real_jets, synthetic_inputs
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from weaver_ext.checkpoint import CheckpointError, load_checkpoint
from weaver_ext.config import OptionError

KIN = JETCLASS_CONFIGS / "JetClass_kin.yaml"
TINY = {"num_layers": 1, "num_cls_layers": 1, "embed_dims": (16, 16), "pair_embed_dims": (8,), "num_heads": 2}
TINY_PNET = {"conv_params": [(4, (16, 16))], "fc_params": [(16, 0.1)]}
WARM_CALLS = 7  # weaver's SequenceTrimmer starts trimming after 5 calls: test the trimmed path too


@pytest.fixture(scope="module")
def kin_config():
    return DataConfig.load(str(KIN), load_observers=False)


def _network(name: str):
    return import_module(str(REPO_ROOT / "networks" / f"{name}.py"), name=f"_reliability_{name}")


def _model(name: str, data_config, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = _network(name).get_model(data_config, **options)
    return model.eval()


def _batch(data_config, *, batch_size: int = 4, seed: int = 1) -> list[torch.Tensor]:
    x = synthetic_inputs(data_config, batch_size=batch_size, multiplicity=(5, 20), seed=seed, length=24)
    return [x[k].clone() for k in data_config.input_names]


def _eval(model: torch.nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(WARM_CALLS):
            out = model(*inputs)
    return out


def _empty(inputs: list[torch.Tensor], rows: slice | int) -> list[torch.Tensor]:
    """Zero the features, vectors and mask of ``rows`` (weaver pads an empty jet with zeros: all-zero mask row)."""
    out = [t.clone() for t in inputs]
    for t in out[1:]:  # pf_features, pf_vectors, pf_mask (pf_points is unused by ParT; zero it too for honesty)
        t[rows] = 0
    out[0][rows] = 0
    return out


# ---------------------------------------------------------------------------------------------- empty jets


@pytest.mark.parametrize("name,options", [("part", TINY), ("particlenet", TINY_PNET)])
def test_empty_jet_in_a_batch_gives_finite_output(kin_config, name, options):
    inputs = _batch(kin_config)
    model = _model(name, kin_config, options)
    out = _eval(model, _empty(inputs, 0))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    model.train()
    out = model(*_empty(inputs, 0))
    assert torch.isfinite(out).all()


def test_batch_of_only_empty_jets_in_eval(kin_config):
    """weaver-core's sparse PairEmbed fails on zero pairs; ParT.pair_bias returns a zero bias instead."""
    out = _eval(_model("part", kin_config, TINY), _empty(_batch(kin_config), slice(None)))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("multiplicity", [0, 3], ids=["all_empty", "all_below_k"])
def test_particlenet_batch_of_jets_with_at_most_k_particles(kin_config, multiplicity):
    """k = 4 here (TINY_PNET); the published JetClass ParticleNet has k = 16.

    weaver-core's trimmer would cut such a batch below k + 1 slots and its kNN fails ('selected index k out of
    range'); networks/particlenet.py keeps at least k + 1 slots (MinLengthTrimmer).
    """
    x = synthetic_inputs(kin_config, batch_size=2, multiplicity=max(multiplicity, 1), seed=3, length=24)
    inputs = [x[k].clone() for k in kin_config.input_names]
    if multiplicity == 0:
        inputs = _empty(inputs, slice(None))
    out = _eval(_model("particlenet", kin_config, TINY_PNET), inputs)
    assert torch.isfinite(out).all()


def test_particlenet_without_trimming_handles_small_batches(kin_config):
    """The workaround today: -o trim False (every call runs on the full padded length)."""
    inputs = _empty(_batch(kin_config), slice(None))
    out = _eval(_model("particlenet", kin_config, {**TINY_PNET, "trim": False}), inputs)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("group", [1, 2], ids=["pf_features", "pf_vectors"])
def test_nan_or_inf_in_a_real_particle_poisons_only_that_jet(kin_config, value, group):
    """Observed policy: the model does not sanitise; the bad jet's logits are NaN, the other jets are unchanged."""
    inputs = _batch(kin_config)
    model = _model("part", kin_config, TINY)
    clean = _eval(model, inputs)
    dirty = [t.clone() for t in inputs]
    dirty[group][1, 0, 0] = value  # jet 1, first variable, first (real) particle
    out = _eval(model, dirty)
    assert torch.isnan(out[1]).all()
    keep = [0, 2, 3]
    torch.testing.assert_close(out[keep], clean[keep], rtol=1e-5, atol=1e-5)


def test_nan_in_a_padded_slot_is_ignored(kin_config):
    inputs = _batch(kin_config)
    model = _model("part", kin_config, TINY)
    clean = _eval(model, inputs)
    n_real = int(inputs[3][1].sum())
    assert n_real < inputs[3].shape[-1]
    dirty = [t.clone() for t in inputs]
    dirty[1][1, :, n_real] = float("nan")
    torch.testing.assert_close(_eval(model, dirty), clean, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- options


def test_unknown_option_is_an_option_error(kin_config):
    with pytest.raises(OptionError, match="unknown option 'foo'; valid options are: embed_dims"):
        _network("part").get_model(kin_config, foo=1)


@pytest.mark.parametrize("key,value,expected", [("num_layers", "two", "expects int"),
                                                ("embed_dims", 16, "expects tuple")])
def test_wrong_option_type_is_an_option_error(kin_config, key, value, expected):
    with pytest.raises(OptionError, match=f"option '{key}' {expected}"):
        _network("part").get_model(kin_config, **{key: value})


def test_particlenet_unknown_option_lists_valid_ones(kin_config):
    with pytest.raises(ValueError, match="unknown ParticleNet option.*valid options: conv_params"):
        _network("particlenet").get_model(kin_config, foo=1)


@pytest.mark.parametrize("name", ["part", "dsa_part", "diff_part", "transformer"])
def test_wrong_data_config_inputs_is_a_value_error(name):
    tracks = DataConfig.load(str(REPO_ROOT / "data" / "Tracks" / "tracks.yaml"), load_observers=False)
    with pytest.raises(ValueError, match=r"data config inputs are \['hit_points'.*this network needs \['pf_points'"):
        _network(name).get_model(tracks)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_from_another_architecture_is_refused(kin_config, tmp_path):
    path = tmp_path / "pnet.pt"
    torch.save(_model("particlenet", kin_config, TINY_PNET).state_dict(), path)
    with pytest.raises(CheckpointError, match="missing key 'mod.cls_token'"):
        load_checkpoint(_model("part", kin_config, TINY), path)


def test_checkpoint_with_other_sizes_names_the_shape(kin_config, tmp_path):
    path = tmp_path / "bigger.pt"
    torch.save(_model("part", kin_config, {**TINY, "embed_dims": (32, 32)}).state_dict(), path)
    with pytest.raises(CheckpointError, match="has shape .* the model expects"):
        load_checkpoint(_model("part", kin_config, TINY), path)


class Payload:
    """An arbitrary pickled object: loading it would need to execute code from the file."""


def test_checkpoint_with_pickled_code_is_refused(kin_config, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"mod.cls_token": torch.zeros(1), "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*not a plain weights file"):
        load_checkpoint(_model("part", kin_config, TINY), path)


def test_missing_checkpoint_file(kin_config, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(_model("part", kin_config, TINY), tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------------------- profiler CLI


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_profiler_device_cuda_without_gpu_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "profiling.forward", "--network-config", "networks/part.py", "--data-config", str(KIN),
         "--synthetic", "--device", "cuda", "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "--device cuda requested but torch.cuda.is_available() is False" in last
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- weaver's pipeline


def _config_with_length(tmp_path: Path, length: int) -> Path:
    """A copy of JetClass_kin.yaml with every particle input padded/truncated to ``length``."""
    cfg = yaml.safe_load(KIN.read_text())
    for group in cfg["inputs"].values():
        group["length"] = length
    path = tmp_path / f"kin_len{length}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_weaver_truncates_jets_longer_than_the_configured_length(jet_files, tmp_path):
    """weaver keeps the first ``length`` particles (file order) of a longer jet and drops the rest silently."""
    length = 48  # generated jets have ~30-110 particles: some above, some below
    jets = load_real_jets(jet_files[:1], _config_with_length(tmp_path, length), max_jets=40)
    raw = uproot.open(jet_files[0])["tree"].arrays(["part_px"], library="ak", entry_stop=len(jets.labels))
    counts = np.array([len(x) for x in raw["part_px"]])
    assert (counts > length).any() and (counts <= length).any(), "sample needs both long and short jets"
    mask_sum = jets.inputs["pf_mask"][:, 0].sum(-1).numpy()
    np.testing.assert_array_equal(mask_sum, np.minimum(counts, length))
    long_jet = int(np.argmax(counts > length))
    first_px = np.asarray(raw["part_px"][long_jet][:length], dtype=np.float32)
    np.testing.assert_allclose(jets.inputs["pf_vectors"][long_jet, 0].numpy(), first_px, rtol=1e-6)


def _rewrite_with_bad_jets(src: Path, dst: Path) -> Path:
    """Copy a JetClass-layout file; jet 0 loses all particles, jet 1 gets NaN deta, jet 2 gets inf px (1st particle)."""
    from data.pythia_jets import JET_FLOAT_BRANCHES, PARTICLE_FLOAT_BRANCHES, PARTICLE_INT_BRANCHES, JetBlock
    from data.rootio import LABELS, write_jet_file

    tree = uproot.open(src)["tree"]
    arrays = tree.arrays(library="ak")
    counts = np.array([len(x) for x in arrays["part_px"]], dtype=np.int64)
    keep = np.ones(counts.sum(), dtype=bool)
    keep[: counts[0]] = False  # drop jet 0's particles
    particles = {}
    for b in (*PARTICLE_FLOAT_BRANCHES, *PARTICLE_INT_BRANCHES):
        particles[b] = ak.to_numpy(ak.flatten(arrays[b]))[keep].copy()
    new_counts = counts.copy()
    new_counts[0] = 0
    starts = np.concatenate([[0], np.cumsum(new_counts)[:-1]])
    particles["part_deta"][starts[1]] = np.nan
    particles["part_px"][starts[2]] = np.inf
    jets = {b: np.asarray(arrays[b], dtype=np.float32) for b in JET_FLOAT_BRANCHES}
    label = next(name for name in LABELS if bool(arrays[f"label_{name}"][0]))
    return write_jet_file(dst, JetBlock(jets=jets, particles=particles, counts=new_counts), label)


@pytest.fixture(scope="module")
def bad_jets(jet_files, tmp_path_factory):
    """The first file rewritten with an empty jet, a NaN and an inf, read back through weaver's pipeline."""
    tmp = tmp_path_factory.mktemp("bad_jets")
    path = _rewrite_with_bad_jets(Path(jet_files[0]), tmp / "bad.root")
    return load_real_jets([path], KIN, max_jets=8)


def test_weaver_reads_an_empty_jet_as_an_all_zero_row(bad_jets, kin_config):
    for name in ("pf_features", "pf_vectors", "pf_mask"):
        assert not bad_jets.inputs[name][0].any(), name
    out = _eval(_model("part", kin_config, TINY), [bad_jets.inputs[k] for k in kin_config.input_names])
    assert torch.isfinite(out[0]).all()


def test_weaver_replaces_nan_inputs_with_zero(bad_jets, kin_config):
    """weaver's pipeline: NaN -> 0 (nan_to_num, with a one-time warning), so the model sees a finite value."""
    deta_index = kin_config.input_dicts["pf_features"].index("part_deta")
    assert bad_jets.inputs["pf_features"][1, deta_index, 0].item() == 0.0
    assert torch.isfinite(bad_jets.inputs["pf_features"][1]).all()


def test_weaver_passes_inf_in_unstandardised_vectors(bad_jets, kin_config):
    """Observed: an inf in part_px (pf_vectors, no standardisation) is not clipped; the jet's logits become NaN."""
    px = bad_jets.inputs["pf_vectors"][2, 0, 0].item()
    assert not np.isfinite(px) or abs(px) > 1e30
    out = _eval(_model("part", kin_config, TINY), [bad_jets.inputs[k] for k in kin_config.input_names])
    assert not torch.isfinite(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3]]).all()


# ---------------------------------------------------------------------------------------------- real weaver --predict


def _weaver_predict(files: list[Path], data_config: Path, weights: Path, out: Path) -> subprocess.CompletedProcess:
    from tests.helpers import WEAVER

    opts = {"num_layers": "1", "num_cls_layers": "1", "embed_dims": "(16,16)", "pair_embed_dims": "(8,)",
            "num_heads": "2"}
    args = [WEAVER, "--predict", "--data-test", *map(str, files), "--data-config", str(data_config),
            "--network-config", str(REPO_ROOT / "networks" / "part.py"), *[a for k, v in opts.items() for a in
                                                                         ("-o", k, v)],
            "--model-prefix", str(weights), "--gpus", "", "--num-workers", "0", "--batch-size", "16",
            "--predict-output", str(out)]
    return subprocess.run(args, cwd=out.parent, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing_branch", "truncated", "empty", "good_plus_truncated"])
def test_weaver_predict_on_broken_files_fails_without_output(jet_files, kin_config, tmp_path, case):
    """Observed weaver-core 0.5.3 behaviour: a non-zero exit, no output file, a multi-line traceback."""
    weights = tmp_path / "w.pt"
    torch.save(_model("part", kin_config, TINY).state_dict(), weights)
    good = Path(jet_files[0])
    config = tmp_path / "kin.yaml"
    config.write_text(KIN.read_text())  # weaver writes side files next to its data config
    trunc = tmp_path / "trunc.root"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files, expected = {
        "missing_branch": ([good], "no field 'part_nosuch'"),
        "truncated": ([trunc], "Zero entries loaded when reading files"),
        "empty": ([tmp_path / "empty.root"], "Zero entries loaded when reading files"),
        "good_plus_truncated": ([good, trunc], "Zero entries loaded when reading files"),
    }[case]
    (tmp_path / "empty.root").write_bytes(b"")
    if case == "missing_branch":
        cfg = yaml.safe_load(KIN.read_text())
        cfg["inputs"]["pf_features"]["vars"][0][0] = "part_nosuch"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "pred.root"
    proc = _weaver_predict(files, config, weights, out)
    assert proc.returncode != 0
    assert not out.exists()
    assert expected in proc.stdout + proc.stderr
