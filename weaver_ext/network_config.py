"""What a network config file exports to weaver, built in one place: ``get_model``, ``get_loss`` and the hooks.

A network config of the ParT family is then a preset, a name and its default options::

    get_model, get_loss, get_train_fn, get_evaluate_fn = part_family("networks/diff_part.py",
                                                                     defaults={"attention": "differential"})

``-o seed N`` is applied (``reproducibility``) and every ``-o`` option is validated with one-line errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .losses import AuxLoss
from .network import build_part_tagger
from .reproducibility import apply_seed_option, without_seed
from .track import build_track_loss, build_track_model
from .weaver_hooks import network_hooks

__all__ = ["part_family", "track_family"]

NetworkFunctions = tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any], Callable[..., Any]]


def part_family(where: str, *, defaults: dict[str, Any] | None = None) -> NetworkFunctions:
    """The four functions of a jet-tagging network config: ParT with any attention kind, preset ``defaults``."""

    def get_model(data_config: Any, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        return build_part_tagger(data_config, apply_seed_option(kwargs), where=where, defaults=defaults)

    def get_loss(data_config: Any, **kwargs: Any) -> AuxLoss:
        return AuxLoss(nn.CrossEntropyLoss())  # plus the auxiliary terms of sparse attention, bound in training

    return (get_model, get_loss, *network_hooks("classification"))


def track_family(where: str) -> NetworkFunctions:
    """The four functions of the muon-track (hit regression) network config."""

    def get_model(data_config: Any, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
        return build_track_model(data_config, apply_seed_option(kwargs), where=where)

    def get_loss(data_config: Any, **kwargs: Any) -> AuxLoss:
        return AuxLoss(build_track_loss(data_config, without_seed(kwargs), where=where))

    return (get_model, get_loss, *network_hooks("regression"))
