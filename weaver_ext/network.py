"""Glue between weaver's network-config interface and the models: wrappers, ``model_info``, option parsing.

weaver calls ``get_model(data_config, **options)`` with the ``-o`` options plus the injected ``for_inference``,
``use_amp`` and ``compile_model``; the functions here turn that into a model and the ``model_info`` weaver needs
for ``--export-onnx`` (input names, shapes and dynamic axes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import OptionError, from_options
from .part import ParticleTransformer, masked_vector_like
from .part_config import ParTConfig, upgrade_options, version_defaults

__all__ = ["JET_INPUTS", "TAGGER_OPTIONS", "CountsNonFinite", "JetTagger", "NonFiniteMask", "build_part_tagger",
           "check_inputs", "check_jet_inputs", "jet_model_info", "nonfinite_mask", "resolve_num_classes"]

Tensor = torch.Tensor

JET_INPUTS = ("pf_points", "pf_features", "pf_vectors", "pf_mask")


# wrapper-level -o options (popped before the model config is parsed) and their defaults
TAGGER_OPTIONS = {"mask_nonfinite": True, "log_nonfinite": False}


class NonFiniteMask(nn.Module):
    """Turns real particles with any NaN or +-inf in points, features or four-vector into padding, and counts them.

    The policy behind ``-o mask_nonfinite`` (on by default): the particle gets mask 0, zero points and features and
    the four-vector ``MASKED_VECTOR``, instead of turning its jet's logits (and a training loss) into NaN. Finite
    inputs pass bitwise unchanged. The count lives on the device (no host sync unless read, or ``log``).
    """

    def __init__(self, *, log: bool = False) -> None:
        super().__init__()
        self.log = log
        # a plain tensor attribute, not a buffer: not saved in checkpoints and not overwritten by DDP's buffer sync
        self._count = torch.zeros((), dtype=torch.long)

    @property
    def count(self) -> int:
        """Real particles masked since construction or the last ``reset``."""
        return int(self._count)

    def reset(self) -> None:
        self._count = torch.zeros((), dtype=torch.long)

    def forward(self, points: Tensor, features: Tensor, vectors: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        finite = torch.isfinite(features).all(1, keepdim=True) & torch.isfinite(vectors).all(1, keepdim=True)
        finite = finite & torch.isfinite(points).all(1, keepdim=True)  # (N, 1, P)
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()):
            bad = ((mask != 0) & ~finite).sum()
            self._count = self._count.to(bad.device) + bad
            if self.log:
                self._log(int(bad))
        zero = torch.zeros((), dtype=features.dtype, device=features.device)
        return (torch.where(finite, points, zero), torch.where(finite, features, zero),
                torch.where(finite, vectors, masked_vector_like(vectors)),
                torch.where(finite, mask, torch.zeros_like(mask)))

    @torch.jit.ignore
    def _log(self, count: int) -> None:
        if count:
            from weaver.utils.logger import _logger

            _logger.warning("masked %d particle(s) with NaN/inf inputs in this batch (%d in total)", count,
                            self.count)


def nonfinite_mask(options: dict[str, Any], *, where: str) -> NonFiniteMask | None:
    """Pop ``mask_nonfinite``/``log_nonfinite`` from weaver's options (bools) and build the masking step or None."""
    values = {k: options.pop(k, default) for k, default in TAGGER_OPTIONS.items()}
    for key, value in values.items():
        if not isinstance(value, bool):
            raise OptionError(f"{where}: option {key!r} expects bool, got {value!r} ({type(value).__name__})")
    return NonFiniteMask(log=values["log_nonfinite"]) if values["mask_nonfinite"] else None


class CountsNonFinite:
    """Mixin for weaver-facing wrappers with a ``nonfinite`` step (a ``NonFiniteMask`` or None)."""

    nonfinite: NonFiniteMask | None

    @property
    def nonfinite_particles(self) -> int:
        """Real particles masked for a non-finite value since construction or the last reset."""
        return 0 if self.nonfinite is None else self.nonfinite.count

    def reset_nonfinite_count(self) -> None:
        if self.nonfinite is not None:
            self.nonfinite.reset()


class JetTagger(CountsNonFinite, nn.Module):
    """weaver-facing wrapper: inputs in data-config order (points, features, vectors, mask) -> ``mod``.

    The ``mod.`` prefix matches the particle_transformer repository's network configs, so their checkpoints load.
    ``nonfinite`` (a ``NonFiniteMask`` or None) applies the non-finite input policy first.
    """

    def __init__(self, mod: nn.Module, *, nonfinite: NonFiniteMask | None = None) -> None:
        super().__init__()
        self.mod = mod
        self.nonfinite = nonfinite

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"mod.cls_token"}

    def forward(self, points: Tensor, features: Tensor, lorentz_vectors: Tensor, mask: Tensor) -> Tensor:
        if self.nonfinite is not None:
            points, features, lorentz_vectors, mask = self.nonfinite(points, features, lorentz_vectors, mask)
        return self.mod(features, v=lorentz_vectors, mask=mask)


def check_inputs(data_config: Any, expected: tuple[str, ...], *, vectors: tuple[str, str], where: str) -> None:
    """Fail with one line when the data config's inputs are not ``expected`` or the four-vector input ``vectors[0]``
    does not hold 4 variables (``vectors[1]`` names them)."""
    names = tuple(data_config.input_names)
    if names != expected:
        raise ValueError(f"{where}: data config inputs are {list(names)}; this network needs {list(expected)}")
    if data_config.input_shapes[vectors[0]][1] != 4:
        raise ValueError(f"{where}: {vectors[0]} must hold 4 variables ({vectors[1]})")


def check_jet_inputs(data_config: Any, *, where: str) -> None:
    """Fail with one line when the data config does not provide the jet inputs the network needs."""
    check_inputs(data_config, JET_INPUTS, vectors=("pf_vectors", "px, py, pz, energy"), where=where)


def jet_model_info(data_config: Any, output_name: str = "softmax") -> dict[str, Any]:
    """model_info for a jet tagger: batch and particle axes dynamic for every input."""
    names = list(data_config.input_names)
    return {
        "input_names": names,
        "input_shapes": {k: ((1,) + tuple(s[1:])) for k, s in data_config.input_shapes.items()},
        "output_names": [output_name],
        "dynamic_axes": {**{k: {0: "N", 2: "n_" + k.split("_")[0]} for k in names}, output_name: {0: "N"}},
    }


def resolve_num_classes(data_config: Any, options: dict[str, Any], *, where: str) -> int:
    """Pop ``-o num_classes`` and check it against the data config's labels; returns the class count.

    Simple labels (``labels: type: simple``) give the count themselves, and ``num_classes`` may only repeat it.
    Custom labels (e.g. JetClass-II: ``truth_label: jet_label``, 188 classes) give an integer per jet whose range
    the config does not state, so ``num_classes`` is required there (``-o task 'regression'``: one output per
    custom label unless given).
    """
    given = options.pop("num_classes", None)
    if given is not None and (not isinstance(given, int) or isinstance(given, bool) or given < 1):
        raise OptionError(f"{where}: option 'num_classes' expects a positive int, got {given!r}")
    if data_config.label_type == "simple":
        n = len(data_config.label_value)
        if given is not None and given != n:
            raise OptionError(f"{where}: -o num_classes {given} contradicts the data config, whose simple labels "
                              f"define {n} classes ({', '.join(data_config.label_value)})")
        return n
    if given is None and options.get("task") == "regression":
        return len(data_config.label_value)
    if given is None:
        labels = ", ".join(f"{k}: {v}" for k, v in data_config.label_value.items())
        raise OptionError(f"{where}: the data config has custom labels ({labels}), so the class count is not known: "
                          "pass -o num_classes N (e.g. 188 for JetClass-II)")
    return given


def build_part_tagger(data_config: Any, options: dict[str, Any], *, where: str,
                      defaults: dict[str, Any] | None = None) -> tuple[JetTagger, dict[str, Any]]:
    """A ParT-family tagger for JetClass-style inputs from weaver options (``defaults``: the preset's own)."""
    check_jet_inputs(data_config, where=where)
    options = upgrade_options(options, where=where)
    nonfinite = nonfinite_mask(options, where=where)
    num_classes = resolve_num_classes(data_config, options, where=where)
    cfg = from_options(ParTConfig, options, where=where, defaults=version_defaults(options, defaults, where=where),
                       input_dim=len(data_config.input_dicts["pf_features"]), num_classes=num_classes)
    return JetTagger(ParticleTransformer(cfg), nonfinite=nonfinite), jet_model_info(data_config)
