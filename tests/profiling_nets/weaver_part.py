"""Test-only weaver network config: weaver-core's own ParticleTransformer (JetClass inputs), sizes via ``-o``."""

from typing import Any

import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer


class ParTWrapper(torch.nn.Module):
    """Maps weaver's (points, features, lorentz_vectors, mask) onto ``ParticleTransformer(x, v, mask)``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.mod = ParticleTransformer(**kwargs)

    def forward(self, points, features, lorentz_vectors, mask):  # noqa: ANN001, ANN201
        return self.mod(features, v=lorentz_vectors, mask=mask)


def get_model(data_config: Any, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """weaver-core ParT with published defaults; any ParticleTransformer keyword may be overridden with ``-o``."""
    cfg = dict(
        input_dim=len(data_config.input_dicts["pf_features"]),
        num_classes=len(data_config.label_value),
        pair_input_dim=4,
        embed_dims=[128, 512, 128],
        pair_embed_dims=[64, 64, 64],
        num_heads=8,
        num_layers=8,
        num_cls_layers=2,
        fc_params=[],
    )
    cfg.update(kwargs)
    model = ParTWrapper(**cfg)
    names = list(data_config.input_names)
    info = {
        "input_names": names,
        "input_shapes": {k: ((1,) + tuple(s[1:])) for k, s in data_config.input_shapes.items()},
        "output_names": ["softmax"],
        "dynamic_axes": {**{k: {0: "N", 2: "n_" + k.split("_")[0]} for k in names}, "softmax": {0: "N"}},
    }
    return model, info


def get_loss(data_config: Any, **kwargs: Any) -> torch.nn.Module:
    """Plain cross-entropy."""
    return torch.nn.CrossEntropyLoss()
