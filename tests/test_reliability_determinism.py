"""Unit tests of weaver_ext.reproducibility: seeding, per-epoch reseeding with data replay, resume repairs."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from weaver.nn.model.ParticleTransformer import SequenceTrimmer
from weaver.utils.dataset import SimpleIterDataset

from profiling.loading import import_network_config, load_data_config
from tests.conftest import JETCLASS_CONFIGS, REPO_ROOT
from tests.helpers import discover_networks, family_setup
from weaver_ext import reproducibility as rep
from weaver_ext.weaver_hooks import make_evaluate_fn

DATA_CONFIG = JETCLASS_CONFIGS / "JetClass_kin.yaml"


@pytest.fixture(autouse=True)
def _restore_torch_determinism():
    """seed_everything switches torch to deterministic kernels process-wide; put the previous settings back."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
    if before[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.uniform()), torch.rand(3)


def test_seed_everything_fixes_python_numpy_and_torch_draws():
    rep.seed_everything(3)
    first = _draws()
    rep.seed_everything(3)
    second = _draws()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    rep.seed_everything(4)
    assert _draws()[:2] != first[:2]
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize("bad", [True, "42", 1.5, -1, 2**32, None])
def test_bad_seed_is_a_one_line_value_error(bad):
    with pytest.raises(ValueError, match="seed"):
        rep.check_seed(bad)


def test_epoch_seed_is_stable_and_distinct_per_epoch_and_stream():
    seeds = {(e, s): rep.epoch_seed(42, e, s) for e in range(20) for s in (rep.TRAIN_STREAM, rep.VAL_STREAM)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**32 for v in seeds.values())
    assert rep.epoch_seed(42, 5) == seeds[(5, rep.TRAIN_STREAM)] != rep.epoch_seed(43, 5)
    with pytest.raises(ValueError, match="epoch"):
        rep.epoch_seed(42, -1)


def test_seed_option_is_removed_before_option_parsing_and_validated():
    assert rep.without_seed({"seed": 1, "num_layers": 2}) == {"num_layers": 2}
    assert rep.seed_option({"num_layers": 2}) is None and rep.seed_option({"seed": 9}) == 9
    with pytest.raises(ValueError, match="seed"):
        rep.apply_seed_option({"seed": "abc"})


@pytest.mark.parametrize("network", discover_networks())
def test_seeded_get_model_gives_identical_initial_weights(network):
    _, data_config_path, tiny = family_setup(network)
    module = import_network_config(REPO_ROOT / "networks" / network, name=f"_det_{network[:-3]}")
    data_config = load_data_config(data_config_path)
    torch.manual_seed(0)
    a = module.get_model(data_config, seed=11, **tiny)[0].state_dict()
    b = module.get_model(data_config, seed=11, **tiny)[0].state_dict()  # global RNG state differs now
    c = module.get_model(data_config, seed=12, **tiny)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert module.get_train_fn(data_config, seed=11, **tiny) is not None
    module.get_loss(data_config, seed=11, **tiny)
    with pytest.raises(ValueError, match="unknown option 'nosuch'"):
        module.get_model(data_config, seed=5, nosuch=1)


def test_evaluate_hook_without_seed_is_weavers_own_function():
    from weaver.utils.nn import tools

    assert make_evaluate_fn("classification") is tools.evaluate_classification
    assert make_evaluate_fn("regression") is tools.evaluate_regression


def _loader(jet_files) -> DataLoader:
    """weaver's training dataset as weaver builds it with --steps-per-epoch (persistent iterator), 0 workers."""
    data = SimpleIterDataset({"_": [str(f) for f in jet_files]}, str(DATA_CONFIG), batch_size=8, for_training=True,
                             load_range_and_fraction=((0, 0.8), 1, 1), fetch_step=0.5, infinity_mode=True,
                             name="train")
    return DataLoader(data, batch_size=8, drop_last=True, num_workers=0)


def _epoch_batches(loader: DataLoader, *, seed: int, epoch: int, steps: int) -> list[np.ndarray]:
    """The inputs of one epoch as weaver's train loop draws them, after the hook's per-epoch reseeding."""
    rep.begin_epoch(loader, seed=seed, epoch=epoch, stream=rep.TRAIN_STREAM, steps_per_epoch=steps)
    batches = []
    for X, _, _ in loader:
        batches.append(X["pf_features"].numpy().copy())
        if len(batches) >= steps:
            break
    rep.drain_loader(loader)
    return batches


def test_resumed_epoch_draws_the_same_data_as_the_uninterrupted_run(jet_files):
    """Epoch 2 from a fresh loader (resume) equals epoch 2 of a loader that ran epochs 0 and 1 (replay)."""
    straight = _loader(jet_files)
    epochs = [_epoch_batches(straight, seed=5, epoch=e, steps=3) for e in range(3)]
    resumed = _epoch_batches(_loader(jet_files), seed=5, epoch=2, steps=3)
    assert all(np.array_equal(a, b) for a, b in zip(resumed, epochs[2], strict=True))
    assert not np.array_equal(epochs[1][0], epochs[2][0])
    other = _epoch_batches(_loader(jet_files), seed=6, epoch=2, steps=3)
    assert not all(np.array_equal(a, b) for a, b in zip(other, epochs[2], strict=True))


def test_warmup_counters_are_saved_and_restored(tmp_path):
    model = torch.nn.Sequential(SequenceTrimmer(enabled=True))
    x, mask = torch.rand(2, 3, 6), torch.ones(2, 1, 6)
    for _ in range(3):
        model[0](x, mask=mask)
    path = rep.save_resume_state(model, args=SimpleNamespace(model_prefix=str(tmp_path / "net")), epoch=0)
    fresh = torch.nn.Sequential(SequenceTrimmer(enabled=True))
    assert rep.restore_warmup_counters(fresh, rep.warmup_counters(model)) == ["0"]
    assert int(fresh[0]._counter) == 3 and path.endswith("net_epoch-0_resume.json")
    assert rep.restore_warmup_counters(fresh) == ["0"] and int(fresh[0]._counter) == fresh[0].warmup_steps


def _resumed_scheduler(tmp_path, make_scheduler, *, per_step: bool, steps: int, load_epoch: int):
    """Train ``load_epoch + 1`` epochs, save like weaver, rebuild like weaver's --load-epoch; return both."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = make_scheduler(opt, -1)
    for _ in range(load_epoch + 1):
        for _ in range(steps if per_step else 1):
            opt.step()
            sched.step()
    torch.save(opt.state_dict(), tmp_path / f"net_epoch-{load_epoch}_optimizer.pt")
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    opt2.load_state_dict(torch.load(tmp_path / f"net_epoch-{load_epoch}_optimizer.pt", weights_only=True))
    sched2 = make_scheduler(opt2, load_epoch * (steps if per_step else 1))  # weaver's last_epoch argument
    sched2._update_per_step = per_step
    args = SimpleNamespace(model_prefix=str(tmp_path / "net"), load_epoch=load_epoch, steps_per_epoch=steps)
    return (opt, sched), (opt2, sched2), args


def test_restore_scheduler_undoes_the_double_decay_of_flat_decay(tmp_path):
    def make(opt, last):
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.01, last_epoch=last)

    (opt, sched), (opt2, sched2), args = _resumed_scheduler(tmp_path, make, per_step=False, steps=4, load_epoch=0)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-4)  # weaver's restore: decay applied twice
    assert rep.restore_scheduler(opt2, sched2, args=args) == {"was": pytest.approx(1e-4), "now": pytest.approx(1e-2)}
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and sched2.last_epoch == sched.last_epoch


def test_restore_scheduler_realigns_per_step_schedules(tmp_path):
    def make(opt, last):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step), last_epoch=last)

    (opt, sched), (opt2, sched2), args = _resumed_scheduler(tmp_path, make, per_step=True, steps=4, load_epoch=1)
    assert sched2.last_epoch == 5 != sched.last_epoch == 8  # weaver: restarts steps_per_epoch - 1 steps behind
    rep.restore_scheduler(opt2, sched2, args=args)
    assert sched2.last_epoch == 8 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for _ in range(3):
        opt.step()
        opt2.step()
        sched.step()
        sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
