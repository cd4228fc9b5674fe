"""What plugs into weaver's training loop: the loss binding, per-epoch DSA statistics, tensorboard, seeding.

``make_train_fn`` wraps weaver's own ``train_classification`` (or ``train_regression``). It receives the model and
the loss weaver built, so it binds the loss to the model's auxiliary-loss channel there (``AuxLoss.bind``): no
module-level state links ``get_model`` to ``get_loss``. After each epoch it writes the DSA statistics per layer to
weaver's log and (with ``--tensorboard``) to the tensorboard writer. With ``-o seed N`` the train and
evaluate hooks also reseed every epoch and make ``--load-epoch`` exact (see ``reproducibility``); every network
config uses these hooks, so models without DSA statistics get the same seeding and resume repairs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from .losses import AuxLoss, find_aux_channel
from .network import NonFiniteMask
from .reproducibility import (
    TRAIN_STREAM,
    VAL_STREAM,
    begin_epoch,
    drain_loader,
    repair_resume,
    save_resume_state,
    seed_option,
)

__all__ = [
    "install_one_line_errors",
    "log_epoch",
    "log_nonfinite",
    "make_evaluate_fn",
    "refuse_compiled_cpu_training",
    "make_train_fn",
    "network_hooks",
]

def log_epoch(model: nn.Module, loss_func: Any, epoch: int, tb_helper: Any = None) -> dict[str, float]:
    """Log DSA statistics of the epoch (per layer) and the mean aux loss; returns the flat dict written."""
    from weaver.utils.logger import _logger

    found = find_aux_channel(model)
    if found is None or not found[0].cfg.sparse_layers:
        return {}
    dsa, channel = found
    flat: dict[str, float] = {"dsa/step": float(dsa.dsa_step),
                              "dsa/kept_fraction_schedule": dsa.current_kept_fraction()}
    if isinstance(loss_func, AuxLoss) and loss_func.running["steps"]:
        run = loss_func.running
        flat["dsa/task_loss"] = run["task"] / run["steps"]
        flat["dsa/aux_loss"] = run["aux"] / max(run["aux_steps"], 1)
        loss_func.reset_running()
    for name, value in channel.last_terms.items():
        flat[f"dsa/last_{name}"] = value
    for layer, stats in channel.epoch_stats(reset=True).items():
        for name, value in stats.items():
            flat[f"dsa/layer{layer}/{name}"] = value
    _logger.info("DSA epoch %d: %s", epoch, ", ".join(f"{k}={v:.6g}" for k, v in flat.items()))
    if tb_helper is not None:
        for key, value in flat.items():
            tb_helper.writer.add_scalar(key.replace("dsa/", "DSA/", 1), value, epoch)
    return flat


def log_nonfinite(model: nn.Module, epoch: int) -> int:
    """Log (weaver's log, warning) and reset the particles masked for NaN/inf inputs during the epoch."""
    from weaver.utils.logger import _logger

    count = 0
    for module in model.modules():
        if isinstance(module, NonFiniteMask):
            count += module.count
            module.reset()
    if count:
        _logger.warning("epoch %d: %d particle(s) with NaN/inf inputs were masked out (treated as padding); "
                        "run `python -m data.check FILES -c DATA_CONFIG` to find them", epoch, count)
    return count


def _weaver_args(kwargs: dict[str, Any]) -> Any:
    """weaver's parsed command line, which it passes to the hooks inside ``extra_args`` (None when absent)."""
    return (kwargs.get("extra_args") or {}).get("args")


def _load_epoch(kwargs: dict[str, Any]) -> int | None:
    """weaver's ``--load-epoch`` (None for a run that was not resumed)."""
    return getattr(_weaver_args(kwargs), "load_epoch", None)


def refuse_compiled_cpu_training(model: torch.nn.Module, dev: Any) -> None:
    """``weaver --compile`` training of a ParT-family model on CPU: one-line error (``part.COMPILE_TRAINING_ERROR``)."""
    from .part import COMPILE_TRAINING_ERROR, ParticleTransformer

    compiled = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    if compiled is None or torch.device(dev if dev is not None else "cpu").type != "cpu":
        return
    if any(isinstance(m, ParticleTransformer) for m in compiled.modules()):
        raise ValueError(COMPILE_TRAINING_ERROR)


def make_train_fn(task: str = "classification", *, seed: int | None = None) -> Callable[..., Any]:
    """weaver's own train loop for ``task``, followed by the DSA epoch log; seeded per epoch when ``seed`` is set.

    On the first epoch of a ``--load-epoch`` run, the LR schedule and trimmer warm-up are repaired (always).
    """
    from weaver.utils.nn import tools

    base = tools.train_regression if task == "regression" else tools.train_classification

    def train(model, loss_func, opt, scheduler, train_loader, dev, epoch, **kwargs):  # weaver's signature
        refuse_compiled_cpu_training(model, dev)
        if isinstance(loss_func, AuxLoss):
            loss_func.bind(model)
        repair_resume(model, opt, scheduler, args=_weaver_args(kwargs), epoch=epoch)
        if seed is not None:
            begin_epoch(train_loader, seed=seed, epoch=epoch, stream=TRAIN_STREAM,
                        steps_per_epoch=kwargs.get("steps_per_epoch"), load_epoch=_load_epoch(kwargs))
        result = base(model, loss_func, opt, scheduler, train_loader, dev, epoch, **kwargs)
        if seed is not None:
            drain_loader(train_loader)
            save_resume_state(model, args=_weaver_args(kwargs), epoch=epoch)
        log_epoch(model, loss_func, epoch, kwargs.get("tb_helper"))
        log_nonfinite(model, epoch)
        return result

    return train


def make_evaluate_fn(task: str = "classification", *, seed: int | None = None) -> Callable[..., Any]:
    """weaver's own evaluation loop for ``task`` (weaver needs both hooks when one is given).

    With ``seed``, each validation pass (``epoch`` given) draws its shuffle and reweighting from its own stream.
    """
    from weaver.utils.nn import tools

    base = tools.evaluate_regression if task == "regression" else tools.evaluate_classification
    if seed is None:
        return base

    def evaluate(model, test_loader, dev, epoch, **kwargs):  # weaver's signature
        if epoch is not None:
            begin_epoch(test_loader, seed=seed, epoch=epoch, stream=VAL_STREAM,
                        steps_per_epoch=kwargs.get("steps_per_epoch"), load_epoch=_load_epoch(kwargs))
        result = base(model, test_loader, dev, epoch, **kwargs)
        if epoch is not None:
            drain_loader(test_loader)
            save_resume_state(model, args=_weaver_args(kwargs), epoch=epoch)
        return result

    return evaluate


_PROJECT_DIRS = tuple(str(Path(__file__).resolve().parents[1] / d) + os.sep for d in ("weaver_ext", "networks"))


def _raised_here(tb: TracebackType | None) -> bool:
    """True when the innermost frame of a traceback is in this project's ``weaver_ext/`` or ``networks/``."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and str(Path(last.tb_frame.f_code.co_filename).resolve()).startswith(_PROJECT_DIRS)


def _one_line_excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, ValueError) and _raised_here(tb):
        print(f"error: {str(exc).splitlines()[0] if str(exc) else exc_type.__name__}", file=sys.stderr)
    else:
        sys.__excepthook__(exc_type, exc, tb)


def install_one_line_errors() -> None:
    """Under the ``weaver`` CLI, an option or data-config error raised by our validation (a ``ValueError`` from
    ``weaver_ext``/``networks``) ends the run with one ``error: ...`` line instead of weaver's traceback. Anything
    else, and any hook someone else installed, is left as it was."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _one_line_excepthook


def network_hooks(task: str = "classification") -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A network config's ``get_train_fn`` and ``get_evaluate_fn`` (``-o seed`` aware; ``-o task`` overrides ``task``).

    Usage in a network config: ``get_train_fn, get_evaluate_fn = network_hooks("classification")``. Importing a
    network config this way also turns our own validation errors into one line (``install_one_line_errors``).
    """
    install_one_line_errors()

    def get_train_fn(data_config: Any, **kwargs: Any) -> Callable[..., Any]:
        return make_train_fn(kwargs.get("task", task), seed=seed_option(kwargs))

    def get_evaluate_fn(data_config: Any, **kwargs: Any) -> Callable[..., Any]:
        return make_evaluate_fn(kwargs.get("task", task), seed=seed_option(kwargs))

    return get_train_fn, get_evaluate_fn
