"""Fixed seeds (``-o seed N``) and an exact ``--load-epoch`` resume for weaver training.

weaver-core 0.5.3 has no seed option: model init draws from torch's global RNG, its training data loader shuffles
with numpy's global RNG (file order, load range, event order, reweighting draws), and with ``--steps-per-epoch`` the
data iterator persists across epochs. ``-o seed N`` seeds everything when the model is built, reseeds at the start
of every epoch with a value derived from (seed, epoch), and, on ``--load-epoch``, replays the data draws of the
skipped epochs so the resumed run sees the same batches as an uninterrupted one. ``repair_resume`` fixes state
that weaver's ``--load-epoch`` restores wrongly (LR schedule, trimmer warm-up) and runs with or without a seed.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, wait
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "SEED_OPTION",
    "TRAIN_STREAM",
    "VAL_STREAM",
    "apply_seed_option",
    "begin_epoch",
    "check_seed",
    "drain_loader",
    "epoch_seed",
    "repair_resume",
    "replay_epochs",
    "restore_scheduler",
    "restore_warmup_counters",
    "resume_state_path",
    "save_resume_state",
    "seed_everything",
    "seed_option",
    "seed_rngs",
    "use_deterministic_kernels",
    "warmup_counters",
    "without_seed",
]

SEED_OPTION = "seed"
TRAIN_STREAM = 0  # derived-seed stream of the training data/dropout of an epoch
VAL_STREAM = 1  # derived-seed stream of the validation pass of an epoch
_MAX_SEED = 2**32 - 1  # numpy's legacy global RNG takes 32-bit seeds


def check_seed(value: Any) -> int:
    """``value`` as a seed: an int in [0, 2**32 - 1]; anything else is a one-line ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"option 'seed' expects an int in [0, {_MAX_SEED}], got {value!r} ({type(value).__name__})")
    if not 0 <= int(value) <= _MAX_SEED:
        raise ValueError(f"option 'seed' must be in [0, {_MAX_SEED}], got {value}")
    return int(value)


def seed_rngs(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device) with ``seed``."""
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_deterministic_kernels() -> None:
    """Ask torch for deterministic kernels, warning (not failing) where an op has none.

    ``warn_only=True``: on CPU the ops our models use are deterministic anyway; on GPU an op without a
    deterministic kernel would otherwise kill a long run mid-epoch, while the warning names the op that breaks
    bitwise reproducibility. cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use to be deterministic.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed every RNG weaver training touches and (by default) switch torch to deterministic kernels."""
    seed_rngs(seed)
    if deterministic:
        use_deterministic_kernels()


def epoch_seed(seed: int, epoch: int, stream: int = TRAIN_STREAM) -> int:
    """A 32-bit seed for ``(seed, epoch, stream)``: independent streams per epoch, equal in every run."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return int(np.random.SeedSequence([check_seed(seed), epoch, stream]).generate_state(1)[0])


def seed_option(options: Mapping[str, Any]) -> int | None:
    """The validated ``seed`` in weaver's ``-o`` options, or None when it is not given."""
    value = options.get(SEED_OPTION)
    return None if value is None else check_seed(value)


def without_seed(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options minus ``seed`` (validated), for option parsers that reject unknown keys."""
    seed_option(options)
    return {k: v for k, v in options.items() if k != SEED_OPTION}


def apply_seed_option(options: Mapping[str, Any]) -> dict[str, Any]:
    """Seed everything now when ``-o seed`` is given (so model init is reproducible); return the other options."""
    seed = seed_option(options)
    if seed is not None:
        seed_everything(seed)
    return without_seed(options)


def _persistent_iters(loader: Any) -> dict[int, Any] | None:
    """weaver's per-worker data iterators kept across epochs (``--steps-per-epoch`` / ``--in-memory``), else None."""
    return getattr(getattr(loader, "dataset", None), "_iters", None)


def drain_loader(loader: Any) -> None:
    """Wait for the data iterators' asynchronous prefetch, so it draws no random numbers after the epoch ends.

    weaver's iterator loads the next chunk in a thread that uses numpy's global RNG; left running, it would race
    with the validation pass or with the next epoch's reseeding.
    """
    for it in (_persistent_iters(loader) or {}).values():
        prefetch = getattr(it, "prefetch", None)
        if isinstance(prefetch, Future):
            wait([prefetch])


def replay_epochs(loader: Any, *, seed: int, epochs: int, steps_per_epoch: int, stream: int = TRAIN_STREAM) -> int:
    """Draw the data of epochs ``0 .. epochs-1`` exactly as a training run would, without running the model.

    Rebuilds the persistent data iterator's state (shuffled chunk, cursor, pending prefetch) after ``--load-epoch``;
    returns the number of jets drawn. Only meaningful with ``--num-workers 0`` (workers keep their own RNGs).
    """
    from tqdm import tqdm

    dataset = loader.dataset
    per_epoch = max(1, int(steps_per_epoch)) * int(loader.batch_size)  # weaver runs >= 1 batch
    drawn = 0
    with tqdm(total=epochs * per_epoch, desc="replaying data of skipped epochs", unit="jet") as bar:
        for epoch in range(epochs):
            seed_rngs(epoch_seed(seed, epoch, stream))
            it = iter(dataset)
            for _ in range(per_epoch):
                next(it)
            drawn += per_epoch
            bar.update(per_epoch)
            drain_loader(loader)
    return drawn


def begin_epoch(loader: Any, *, seed: int, epoch: int, stream: int, steps_per_epoch: int | None,
                load_epoch: int | None = None) -> None:
    """Reseed for ``epoch`` of ``stream``; first replay the skipped epochs when a resumed run has no data state.

    A persistent iterator that does not exist yet at ``epoch > 0`` means the run was resumed with ``--load-epoch``
    (``load_epoch``): the uninterrupted run would have carried its state over from the earlier epochs, so those
    draws are replayed. With ``--num-workers > 0`` the iterators live in the worker processes and are not replayed.
    """
    from weaver.utils.logger import _logger

    iters = _persistent_iters(loader)
    workers = getattr(loader, "num_workers", 0)
    if iters is not None and steps_per_epoch is not None and epoch > 0:
        if workers == 0 and not iters:
            drawn = replay_epochs(loader, seed=seed, epochs=epoch, steps_per_epoch=steps_per_epoch, stream=stream)
            _logger.info("seed %d: replayed the data draws of epochs 0-%d (%d jets) before epoch %d",
                         seed, epoch - 1, drawn, epoch)
        elif workers > 0 and load_epoch is not None and epoch == load_epoch + 1:
            _logger.warning("seed %d: resumed with --num-workers %d; the data order of epoch %d is not replayed "
                            "(each worker keeps its own RNG); use --num-workers 0 for an exact resume",
                            seed, workers, epoch)
    seed_rngs(epoch_seed(seed, epoch, stream))


def warmup_counters(model: nn.Module) -> dict[str, int]:
    """The warm-up call counters of weaver's ``SequenceTrimmer`` modules in ``model``, by module name."""
    out = {}
    for name, module in model.named_modules():
        counter = getattr(module, "_counter", None)
        if isinstance(counter, torch.Tensor) and isinstance(getattr(module, "warmup_steps", None), int):
            out[name] = int(counter.max())
    return out


def restore_warmup_counters(model: nn.Module, saved: Mapping[str, int] | None = None) -> list[str]:
    """Put back the trimmers' warm-up counters (``saved``, else "warm-up done"); returns the modules changed.

    The ``_counter`` buffer is not saved in weaver's checkpoints, so after ``--load-epoch`` the first
    ``warmup_steps`` (5) forward calls would skip trimming and the particle shuffle (and their torch RNG draws) that
    the uninterrupted run makes. Without ``saved`` this is exact when the interrupted run had made >= 5 forward calls.
    """
    modules = dict(model.named_modules())
    changed = []
    for name, count in warmup_counters(model).items():
        module = modules[name]
        value = module.warmup_steps if saved is None else int(saved.get(name, module.warmup_steps))
        if count != value:
            module._counter.fill_(value)
            changed.append(name)
    return changed


def resume_state_path(model_prefix: str, epoch: int) -> str:
    """Where the state weaver's checkpoint lacks is kept for epoch ``epoch`` (not matched by weaver's auto-clean)."""
    return f"{model_prefix}_epoch-{epoch}_resume.json"


def save_resume_state(model: nn.Module, *, args: Any, epoch: int) -> str | None:
    """Write the trimmer warm-up counters after ``epoch`` beside weaver's checkpoint; returns the path or None."""
    prefix = getattr(args, "model_prefix", None)
    if not prefix or epoch is None or getattr(args, "local_rank", None) not in (None, 0):
        return None  # no checkpoint to go with it, or a DDP rank other than 0 (weaver saves on rank 0 only)
    path = resume_state_path(prefix, epoch)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)  # the train hook runs before weaver creates the folder
    with open(path, "w") as f:
        json.dump({"epoch": epoch, "warmup_counters": warmup_counters(model)}, f)
    return path


def restore_scheduler(opt: torch.optim.Optimizer, scheduler: Any, *, args: Any) -> dict[str, float] | None:
    """Undo weaver's LR-scheduler restore errors after ``--load-epoch k``; returns {'was': lr, 'now': lr} or None.

    weaver rebuilds the scheduler with ``last_epoch=k`` (``k * steps_per_epoch`` for per-step schedulers) after
    loading the optimizer state, and the scheduler's constructor steps once more: an epoch-wise ``MultiStepLR``
    applies its decay a second time when epoch k+1 is a milestone (flat+decay), and per-step schedules restart
    ``steps_per_epoch - 1`` steps behind. The checkpointed optimizer already holds the hyper-parameters of epoch k+1,
    so they are put back and ``last_epoch`` is set to the uninterrupted run's value.
    """
    if scheduler is None or args is None or getattr(args, "load_epoch", None) is None:
        return None
    path = f"{args.model_prefix}_epoch-{args.load_epoch}_optimizer.pt"
    if not os.path.exists(path):
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)["param_groups"]
    except Exception as err:  # noqa: BLE001 - an exotic optimizer state: keep weaver's own restore, say so
        warnings.warn(f"could not re-read {path} to repair the LR schedule: {err}", stacklevel=2)
        return None
    was = float(opt.param_groups[0]["lr"])
    for group, state in zip(opt.param_groups, saved, strict=True):
        for key, value in state.items():
            if key != "params":
                group[key] = value
    per_step = getattr(scheduler, "_update_per_step", False)
    scheduler.last_epoch = (args.load_epoch + 1) * (args.steps_per_epoch if per_step else 1)
    scheduler._last_lr = [group["lr"] for group in opt.param_groups]
    return {"was": was, "now": float(opt.param_groups[0]["lr"])}


def repair_resume(model: nn.Module, opt: torch.optim.Optimizer, scheduler: Any, *, args: Any, epoch: int) -> None:
    """At the first epoch of a ``--load-epoch`` run, restore what weaver's resume gets wrong (logged)."""
    from weaver.utils.logger import _logger

    if args is None or getattr(args, "load_epoch", None) is None or epoch != args.load_epoch + 1:
        return
    lr = restore_scheduler(opt, scheduler, args=args)
    if lr is not None:
        _logger.info("resume: LR schedule restored from the checkpoint (weaver rebuilt lr=%.6g, restored lr=%.6g, "
                     "last_epoch=%d)", lr["was"], lr["now"], scheduler.last_epoch)
    path = resume_state_path(args.model_prefix, args.load_epoch)
    saved = None
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)["warmup_counters"]
    trimmers = restore_warmup_counters(model, saved)
    if trimmers:
        _logger.info("resume: trimmer warm-up counters set from %s in %s", path if saved is not None else
                     "'warm-up done' (no resume file)", ", ".join(trimmers))
