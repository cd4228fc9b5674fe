"""Losses for weaver: the task loss plus a model's auxiliary terms (DSA regularisers and indexer distillation).

weaver calls ``loss_func(logits, label)`` only, so the auxiliary terms cannot be passed as arguments. Models that
have them (``DSAParticleTransformer``) store the weighted sum on each training forward; ``AuxLoss`` holds a
reference to that model (bound in the network config's ``get_loss``) and adds the stored term once.
"""

from __future__ import annotations

import weakref
from typing import Protocol

import torch
from torch import nn

Tensor = torch.Tensor


class AuxSource(Protocol):
    def pop_aux_loss(self) -> Tensor | None: ...


class AuxLoss(nn.Module):
    """``base(logits, target) + model.pop_aux_loss()``; keeps training-time running sums of both for the epoch log."""

    def __init__(self, source: AuxSource, *, base: nn.Module | None = None) -> None:
        super().__init__()
        if not hasattr(source, "pop_aux_loss"):
            raise TypeError(f"AuxLoss: {type(source).__name__} has no pop_aux_loss(); it cannot supply aux terms")
        self.base = base if base is not None else nn.CrossEntropyLoss()
        self._source = weakref.ref(source)  # not a submodule: the loss must not own or re-register the model
        self.reset_running()

    def reset_running(self) -> None:
        """Clear the running sums of the task and auxiliary losses."""
        self.running = {"task": 0.0, "aux": 0.0, "steps": 0, "aux_steps": 0}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = self.base(logits, target)
        source = self._source()
        aux = source.pop_aux_loss() if source is not None else None
        if source is None or not getattr(source, "training", False):
            return loss if aux is None else loss + aux.to(loss.dtype)  # evaluation: not in the training means
        self.running["task"] += float(loss.detach())
        self.running["steps"] += 1
        if aux is None:
            return loss
        self.running["aux"] += float(aux.detach())
        self.running["aux_steps"] += 1
        return loss + aux.to(loss.dtype)

    def extra_repr(self) -> str:
        source = self._source()
        return f"base={self.base.__class__.__name__}, source={type(source).__name__ if source else None}"
