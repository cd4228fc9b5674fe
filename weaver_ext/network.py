"""Glue between weaver's network-config interface and the models: wrappers, ``model_info``, option parsing.

weaver calls ``get_model(data_config, **options)`` with the ``-o`` options plus the injected ``for_inference``,
``use_amp`` and ``compile_model``; the functions here turn that into a model and the ``model_info`` weaver needs
for ``--export-onnx`` (input names, shapes and dynamic axes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import from_options
from .part import ParTConfig, ParticleTransformer

Tensor = torch.Tensor

JET_INPUTS = ("pf_points", "pf_features", "pf_vectors", "pf_mask")


class JetTagger(nn.Module):
    """weaver-facing wrapper: inputs in data-config order (points, features, vectors, mask) -> ``mod``.

    The ``mod.`` prefix matches the particle_transformer repository's network configs, so their checkpoints load.
    """

    def __init__(self, mod: nn.Module) -> None:
        super().__init__()
        self.mod = mod

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"mod.cls_token"}

    def forward(self, points: Tensor, features: Tensor, lorentz_vectors: Tensor, mask: Tensor) -> Tensor:
        return self.mod(features, v=lorentz_vectors, mask=mask)


def check_jet_inputs(data_config: Any, *, where: str) -> None:
    """Fail with one line when the data config does not provide the jet inputs the network needs."""
    names = tuple(data_config.input_names)
    if names != JET_INPUTS:
        raise ValueError(f"{where}: data config inputs are {list(names)}; this network needs {list(JET_INPUTS)}")
    if data_config.input_shapes["pf_vectors"][1] != 4:
        raise ValueError(f"{where}: pf_vectors must hold 4 variables (px, py, pz, energy)")


def jet_model_info(data_config: Any, output_name: str = "softmax") -> dict[str, Any]:
    """model_info for a jet tagger: batch and particle axes dynamic for every input."""
    names = list(data_config.input_names)
    return {
        "input_names": names,
        "input_shapes": {k: ((1,) + tuple(s[1:])) for k, s in data_config.input_shapes.items()},
        "output_names": [output_name],
        "dynamic_axes": {**{k: {0: "N", 2: "n_" + k.split("_")[0]} for k in names}, output_name: {0: "N"}},
    }


def build_part_tagger(data_config: Any, options: dict[str, Any], *, where: str,
                      config_cls: type[ParTConfig] = ParTConfig,
                      model_cls: type[nn.Module] = ParticleTransformer) -> tuple[JetTagger, dict[str, Any]]:
    """ParT (or a subclass with its own config) for JetClass-style inputs, configured from weaver options."""
    check_jet_inputs(data_config, where=where)
    cfg = from_options(
        config_cls,
        options,
        where=where,
        input_dim=len(data_config.input_dicts["pf_features"]),
        num_classes=len(data_config.label_value),
    )
    return JetTagger(model_cls(cfg)), jet_model_info(data_config)
