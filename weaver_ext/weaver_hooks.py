"""What plugs into weaver's training loop for DSA-ParT: the loss binding, per-epoch statistics, tensorboard.

weaver-core calls the network config's ``get_model`` and then ``get_loss`` in the same process; ``register_model``
remembers the model built by ``get_model`` so ``get_loss`` can bind an ``AuxLoss`` to it. ``make_train_fn`` wraps
weaver's own ``train_classification`` (or ``train_regression``) and, after each epoch, writes the DSA statistics per
layer to weaver's log and (with ``--tensorboard``) to the tensorboard writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .losses import AuxLoss

_LAST_MODEL: list[nn.Module] = []


def register_model(model: nn.Module) -> nn.Module:
    """Remember ``model`` (the one weaver will train) for ``bind_loss``."""
    _LAST_MODEL[:] = [model]
    return model


def registered_model() -> nn.Module:
    """The model registered last; a clear error when ``get_loss`` runs before ``get_model``."""
    if not _LAST_MODEL:
        raise RuntimeError("weaver_hooks: no model registered; get_model must run before get_loss")
    return _LAST_MODEL[0]


def find_dsa_model(model: nn.Module) -> nn.Module | None:
    """The module with DSA statistics inside weaver's wrappers (DataParallel, torch.compile, JetTagger)."""
    for module in model.modules():
        if hasattr(module, "epoch_stats") and hasattr(module, "pop_aux_loss"):
            return module
    return None


def bind_loss(base: nn.Module | None = None) -> AuxLoss:
    """The loss weaver uses: task loss + the registered model's auxiliary DSA terms."""
    dsa = find_dsa_model(registered_model())
    if dsa is None:
        raise RuntimeError("weaver_hooks: the registered model has no DSA module (pop_aux_loss/epoch_stats)")
    return AuxLoss(dsa, base=base)


def log_epoch(model: nn.Module, loss_func: Any, epoch: int, tb_helper: Any = None) -> dict[str, float]:
    """Log DSA statistics of the epoch (per layer) and the mean aux loss; returns the flat dict written."""
    from weaver.utils.logger import _logger

    dsa = find_dsa_model(model)
    if dsa is None:
        return {}
    flat: dict[str, float] = {"dsa/step": float(dsa.dsa_step) if hasattr(dsa, "dsa_step") else 0.0,
                              "dsa/kept_fraction_schedule": dsa.current_kept_fraction()}
    if isinstance(loss_func, AuxLoss) and loss_func.running["steps"]:
        run = loss_func.running
        flat["dsa/task_loss"] = run["task"] / run["steps"]
        flat["dsa/aux_loss"] = run["aux"] / max(run["aux_steps"], 1)
        loss_func.reset_running()
    for name, value in getattr(dsa, "aux_terms", {}).items():
        flat[f"dsa/last_{name}"] = value
    for layer, stats in dsa.epoch_stats(reset=True).items():
        for name, value in stats.items():
            flat[f"dsa/layer{layer}/{name}"] = value
    _logger.info("DSA epoch %d: %s", epoch, ", ".join(f"{k}={v:.6g}" for k, v in flat.items()))
    if tb_helper is not None:
        for key, value in flat.items():
            tb_helper.writer.add_scalar(key.replace("dsa/", "DSA/", 1), value, epoch)
    return flat


def make_train_fn(task: str = "classification") -> Callable[..., Any]:
    """weaver's own train loop for ``task``, followed by the DSA epoch log."""
    from weaver.utils.nn import tools

    base = tools.train_regression if task == "regression" else tools.train_classification

    def train(model, loss_func, opt, scheduler, train_loader, dev, epoch, **kwargs):  # weaver's signature
        result = base(model, loss_func, opt, scheduler, train_loader, dev, epoch, **kwargs)
        log_epoch(model, loss_func, epoch, kwargs.get("tb_helper"))
        return result

    return train


def make_evaluate_fn(task: str = "classification") -> Callable[..., Any]:
    """weaver's own evaluation loop for ``task`` (weaver needs both hooks when one is given)."""
    from weaver.utils.nn import tools

    return tools.evaluate_regression if task == "regression" else tools.evaluate_classification
