"""Safe checkpoint loading: ``weights_only=True`` and a one-line error naming the first mismatched key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .attention import upgrade_legacy_keys

__all__ = ["CheckpointError", "check_state_dict", "load_checkpoint", "read_state_dict"]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded into the given model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict without executing pickled code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; report them in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing to load {path}: not a plain weights file ({first})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    return dict(state)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` naming the first missing, unexpected or wrongly shaped key.

    Keys written before the attention registry (``attn.lambda_q1``, ``attn.indexer.*``) count under their current
    names, as ``load_state_dict`` moves them (``attention.legacy_core_keys``).
    """
    expected = model.state_dict()
    state = upgrade_legacy_keys(model, dict(state))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in total)")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in total)")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, the model expects {tuple(tensor.shape)}"
            )


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from ``path`` into ``model`` after validating every key and shape."""
    state = read_state_dict(path)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state)
    return model
