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

from profiling.loading import import_network_config, load_data_config, load_real_jets, synthetic_inputs
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from weaver_ext.checkpoint import CheckpointError, load_checkpoint
from weaver_ext.config import OptionError
from weaver_ext.part import MASKED_VECTOR

KIN = JETCLASS_CONFIGS / "JetClass_kin.yaml"
TINY = {"num_layers": 1, "num_cls_layers": 1, "embed_dims": (16, 16), "pair_embed_dims": (8,), "num_heads": 2}
TINY_PNET = {"conv_params": [(4, (16, 16))], "fc_params": [(16, 0.1)]}
WARM_CALLS = 7  # weaver's SequenceTrimmer starts trimming after 5 calls: test the trimmed path too


@pytest.fixture(scope="module")
def kin_config():
    return load_data_config(KIN)


def _network(name: str):
    return import_network_config(REPO_ROOT / "networks" / f"{name}.py", name=f"_reliability_{name}")


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


def _dirty(inputs: list[torch.Tensor], group: int, value: float) -> list[torch.Tensor]:
    """Jet 1's first (real) particle gets ``value`` in the first variable of input ``group``."""
    dirty = [t.clone() for t in inputs]
    dirty[group][1, 0, 0] = value
    return dirty


def _masked_by_hand(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Jet 1's first particle turned into padding exactly as JetTagger's mask_nonfinite does."""
    out = [t.clone() for t in inputs]
    out[0][1, :, 0] = 0
    out[1][1, :, 0] = 0
    out[2][1, :, 0] = torch.tensor(MASKED_VECTOR)
    out[3][1, :, 0] = 0
    return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("group", [1, 2], ids=["pf_features", "pf_vectors"])
def test_without_masking_nan_or_inf_poisons_only_that_jet(kin_config, value, group):
    """``-o mask_nonfinite False``: no sanitising; the bad jet's logits are NaN, the other jets are unchanged."""
    inputs = _batch(kin_config)
    model = _model("part", kin_config, {**TINY, "mask_nonfinite": False})
    clean = _eval(model, inputs)
    out = _eval(model, _dirty(inputs, group, value))
    assert torch.isnan(out[1]).all()
    keep = [0, 2, 3]
    torch.testing.assert_close(out[keep], clean[keep], rtol=1e-5, atol=1e-5)
    assert model.nonfinite_particles == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("group", [0, 1, 2], ids=["pf_points", "pf_features", "pf_vectors"])
@pytest.mark.parametrize("name", ["part", "particlenet"])
def test_mask_nonfinite_treats_the_particle_as_padding(kin_config, value, group, name):
    """Default policy: the particle is masked (bitwise the same as masking it by hand) and counted once per call."""
    inputs = _batch(kin_config)
    model = _model(name, kin_config, TINY if name == "part" else TINY_PNET)
    expected = _eval(model, _masked_by_hand(inputs))
    model.reset_nonfinite_count()
    out = _eval(model, _dirty(inputs, group, value))
    assert torch.isfinite(out).all()
    assert torch.equal(out, expected)
    assert model.nonfinite_particles == WARM_CALLS


def test_nonfinite_in_a_padded_slot_is_not_counted(kin_config):
    inputs = _batch(kin_config)
    model = _model("part", kin_config, TINY)
    n_real = int(inputs[3][1].sum())
    dirty = [t.clone() for t in inputs]
    dirty[2][1, :, n_real] = float("inf")
    assert torch.isfinite(_eval(model, dirty)).all() and model.nonfinite_particles == 0


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_mask_nonfinite_is_bitwise_identical_for_finite_inputs(kin_config, training):
    inputs = _batch(kin_config, batch_size=8)
    outs = []
    for mask_nonfinite in (False, True):
        model = _model("part", kin_config, {**TINY, "mask_nonfinite": mask_nonfinite}).train(training)
        torch.manual_seed(3)  # same dropout masks
        with torch.no_grad():
            outs.append(torch.stack([model(*inputs) for _ in range(WARM_CALLS)]))
    assert torch.equal(outs[0], outs[1])


def test_mask_nonfinite_keeps_a_training_loss_finite(kin_config):
    """Without masking one inf particle makes the batch loss and every gradient NaN; with it they stay finite."""
    dirty = _dirty(_batch(kin_config), 2, float("inf"))
    labels = torch.tensor([0, 1, 2, 3])
    for mask_nonfinite in (False, True):
        model = _model("part", kin_config, {**TINY, "mask_nonfinite": mask_nonfinite}).train()
        loss = torch.nn.functional.cross_entropy(model(*dirty), labels)
        loss.backward()
        grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert bool(torch.isfinite(loss)) == grads_finite == mask_nonfinite


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_onnx_export_with_zero_padded_vectors_is_finite(kin_config):
    """Empty jets and ``pad_mode: constant`` padding put px = py = 0 in pf_vectors (JetClass configs use ``wrap``)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    import io

    inputs = _batch(kin_config)
    n_real = int(inputs[3][1].sum())
    for t in inputs:
        t[1, :, n_real:] = 0  # jet 1: zero padding instead of weaver's wrap padding
    model = _model("part", kin_config, {**TINY, "for_inference": True})
    _, info = _network("part").get_model(kin_config, **TINY)
    buffer = io.BytesIO()
    torch.onnx.export(model, tuple(inputs), buffer, input_names=info["input_names"], output_names=info["output_names"],
                      dynamic_axes=info["dynamic_axes"], opset_version=17, dynamo=False)
    got = onnxruntime.InferenceSession(buffer.getvalue()).run(
        None, {k: t.numpy() for k, t in zip(info["input_names"], inputs, strict=True)})[0]
    with torch.no_grad():
        assert torch.isfinite(model(*inputs)).all()  # torch (sparse pair path) is fine
    assert np.isfinite(got[1]).all()


def test_mask_nonfinite_option_must_be_a_bool(kin_config):
    with pytest.raises(OptionError, match="option 'mask_nonfinite' expects bool, got 1 \\(int\\)"):
        _network("part").get_model(kin_config, mask_nonfinite=1)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_mask_nonfinite_exports_to_onnx(kin_config):
    """The export weaver's --export-onnx does (for_inference=True): finite inputs and a masked inf match torch."""
    onnxruntime = pytest.importorskip("onnxruntime")
    import io

    inputs = _batch(kin_config)
    model = _model("part", kin_config, {**TINY, "for_inference": True})
    _, info = _network("part").get_model(kin_config, **TINY)
    buffer = io.BytesIO()
    torch.onnx.export(model, tuple(inputs), buffer, input_names=info["input_names"], output_names=info["output_names"],
                      dynamic_axes=info["dynamic_axes"], opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue())
    for batch in (inputs, _dirty(inputs, 2, float("inf"))):
        got = session.run(None, {k: t.numpy() for k, t in zip(info["input_names"], batch, strict=True)})[0]
        with torch.no_grad():
            expected = model(*batch).numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


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
    with pytest.raises(ValueError, match="particlenet.py: unknown option .*; valid options are: conv_params"):
        _network("particlenet").get_model(kin_config, foo=1)


@pytest.mark.parametrize("name", ["part", "dsa_part", "diff_part", "transformer"])
def test_wrong_data_config_inputs_is_a_value_error(name):
    tracks = load_data_config(REPO_ROOT / "data" / "Tracks" / "tracks.yaml")
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
    """weaver does not clip an inf in part_px (pf_vectors, no standardisation): without masking the jet's logits are
    NaN; with the default ``mask_nonfinite`` the particle is dropped and counted."""
    px = bad_jets.inputs["pf_vectors"][2, 0, 0].item()
    assert not np.isfinite(px) or abs(px) > 1e30
    inputs = [bad_jets.inputs[k] for k in kin_config.input_names]
    out = _eval(_model("part", kin_config, {**TINY, "mask_nonfinite": False}), inputs)
    assert not torch.isfinite(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3]]).all()
    model = _model("part", kin_config, TINY)
    assert torch.isfinite(_eval(model, inputs)).all() and model.nonfinite_particles == WARM_CALLS


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
    from data.check import check_files

    assert not check_files(files, config, progress=False).ok  # the preflight checker flags every one of these


def _predict_setup(kin_config, tmp_path: Path) -> tuple[Path, Path]:
    weights = tmp_path / "w.pt"
    torch.save(_model("part", kin_config, TINY).state_dict(), weights)
    config = tmp_path / "kin.yaml"
    config.write_text(KIN.read_text())  # weaver writes side files next to its data config
    return weights, config


def test_weaver_predict_reads_an_int_branch_as_float(jet_files, kin_config, tmp_path):
    """``part_charge`` (float32 in JetClass) written as int32: weaver casts it to float32; identical scores."""
    from tests.test_data_check import _arrays, _copy

    good = Path(jet_files[0])
    charge = _arrays(good)["part_charge"]
    as_int = _copy(good, tmp_path / "int.root", part_charge=ak.values_astype(charge, np.int32))
    weights, config = _predict_setup(kin_config, tmp_path)
    out = tmp_path / "pred.root"
    proc = _weaver_predict([good, as_int], config, weights, out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    tree = uproot.open(out)["Events"]
    scores = np.stack([tree[f"score_{k}"].array(library="np") for k in kin_config.label_value], axis=1)
    n = uproot.open(good)["tree"].num_entries
    assert scores.shape[0] == 2 * n
    np.testing.assert_allclose(scores[n:], scores[:n], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["string_jet_pt", "flat_part_px"])
def test_weaver_predict_on_wrong_branch_types(jet_files, kin_config, tmp_path, case):
    """Observed weaver-core 0.5.3 behaviour: a string branch fails deep in awkward (traceback, no output); a per-jet
    ``part_px`` where a per-particle one is expected is broadcast silently (exit 0, output written: garbage)."""
    from data.check import check_files
    from tests.test_data_check import _arrays, _copy

    good = Path(jet_files[0])
    arrays = _arrays(good)
    bad = _copy(good, tmp_path / f"{case}.root", **(
        {"jet_pt": [f"pt{i}" for i in range(len(arrays["jet_pt"]))]} if case == "string_jet_pt"
        else {"part_px": ak.to_numpy(arrays["part_px"][:, 0])}))
    weights, config = _predict_setup(kin_config, tmp_path)
    out = tmp_path / "pred.root"
    proc = _weaver_predict([bad], config, weights, out)
    if case == "string_jet_pt":
        assert proc.returncode != 0 and not out.exists()
        assert "ValueError: cannot broadcast" in proc.stdout + proc.stderr
    else:
        assert proc.returncode == 0 and out.exists()
    problems = check_files([bad], config, progress=False).errors
    assert len(problems) == 1 and ("jet_pt" if case == "string_jet_pt" else "part_px") in problems[0].message


def test_weaver_training_on_a_file_with_inf_masks_and_logs_it(jet_files, tmp_path):
    """Real ``weaver`` training on a file with an inf four-momentum: losses stay finite, the log counts the particle."""
    from tests.helpers import run_weaver

    bad = _rewrite_with_bad_jets(Path(jet_files[0]), tmp_path / "bad.root")
    opts = {"num_layers": "1", "num_cls_layers": "1", "embed_dims": "(16,16)", "pair_embed_dims": "(8,)",
            "num_heads": "2"}
    log = tmp_path / "train.log"
    run_weaver(["--data-train", bad, "--data-config", KIN, "--network-config", REPO_ROOT / "networks" / "part.py",
                *[a for k, v in opts.items() for a in ("-o", k, v)], "--model-prefix", tmp_path / "net",
                "--num-epochs", "1", "--batch-size", "8", "--gpus", "", "--num-workers",
                "0", "--fetch-step", "1", "--log-file", log], cwd=tmp_path)
    text = log.read_text()
    assert "particle(s) with NaN/inf inputs were masked out" in text
    losses = [float(line.split("AvgLoss: ")[1].split(",")[0]) for line in text.splitlines() if "Train AvgLoss" in line]
    assert losses and all(np.isfinite(losses))
