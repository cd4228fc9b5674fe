"""Losses for weaver: the task loss plus a model's auxiliary terms (DSA regularisers and indexer distillation).

weaver calls ``loss_func(logits, label)`` only, so the auxiliary terms cannot be passed as arguments. A model with
sparse attention publishes the weighted sum of each training forward on its ``AuxChannel``; ``AuxLoss`` is bound to
that channel explicitly (``bind``, called by the training hook with the model weaver trains) and adds the term once.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .dsa.statistics import AuxChannel

__all__ = ["AuxLoss", "find_aux_channel"]

Tensor = torch.Tensor


def find_aux_channel(model: nn.Module) -> tuple[nn.Module, AuxChannel] | None:
    """(owning module, channel) of the model inside weaver's wrappers (DataParallel, DDP, torch.compile, JetTagger)."""
    for module in model.modules():
        channel = getattr(module, "aux_channel", None)
        if isinstance(channel, AuxChannel):
            return module, channel
    return None


class AuxLoss(nn.Module):
    """``base(logits, target)`` plus the bound model's auxiliary loss; keeps training-time running sums of both for
    the epoch log. Unbound (``--predict``, or a model without a channel) it is ``base``."""

    def __init__(self, base: nn.Module | None = None) -> None:
        super().__init__()
        self.base = base if base is not None else nn.CrossEntropyLoss()
        self._owner: weakref.ref | None = None  # not a submodule: the loss must not own or re-register the model
        self.reset_running()

    def bind(self, model: nn.Module) -> AuxLoss:
        """Connect to the aux channel of ``model`` (weaver's model, wrappers included); a no-op without one."""
        found = find_aux_channel(model)
        self._owner = None if found is None else weakref.ref(found[0])
        return self

    def reset_running(self) -> None:
        """Clear the running sums of the task and auxiliary losses."""
        self.running = {"task": 0.0, "aux": 0.0, "steps": 0, "aux_steps": 0}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = self.base(logits, target)
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            return loss
        aux = owner.aux_channel.pop_loss()
        if not owner.training:
            return loss if aux is None else loss + aux.to(loss.dtype)  # evaluation: not in the training means
        self.running["task"] += float(loss.detach())
        self.running["steps"] += 1
        if aux is None:
            return loss
        self.running["aux"] += float(aux.detach())
        self.running["aux_steps"] += 1
        return loss + aux.to(loss.dtype)

    def extra_repr(self) -> str:
        owner = self._owner() if self._owner is not None else None
        return f"base={self.base.__class__.__name__}, bound={type(owner).__name__ if owner else None}"
