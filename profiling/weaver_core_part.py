"""weaver network config: weaver-core's own ParticleTransformer, built as the published recipe builds it, with
``-o seed`` (the same seeded data order and initialisation as ours). The baseline of ``profiling.bench_cli``.

    weaver --network-config profiling/weaver_core_part.py -o seed 1 ...
"""

from typing import Any

import torch
from weaver.nn.model.ParticleTransformer import ParticleTransformer

from weaver_ext.network import jet_model_info
from weaver_ext.reproducibility import apply_seed_option
from weaver_ext.weaver_hooks import network_hooks

get_train_fn, get_evaluate_fn = network_hooks("classification")


class ParTWrapper(torch.nn.Module):
    """weaver's (points, features, lorentz_vectors, mask) onto ``ParticleTransformer(x, v, mask)``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.mod = ParticleTransformer(**kwargs)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"mod.cls_token"}

    def forward(self, points, features, lorentz_vectors, mask):  # noqa: ANN001, ANN201
        return self.mod(features, v=lorentz_vectors, mask=mask)


def get_model(data_config: Any, **kwargs: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """example_ParticleTransformer.py's model (weaver-core defaults otherwise); ``-o seed`` seeds its weights."""
    kwargs = apply_seed_option(kwargs)  # seeds everything, as our network configs do
    cfg = dict(input_dim=len(data_config.input_dicts["pf_features"]), num_classes=len(data_config.label_value),
               pair_input_dim=4, use_pre_activation_pair=False, embed_dims=[128, 512, 128],
               pair_embed_dims=[64, 64, 64], num_heads=8, num_layers=8, num_cls_layers=2, block_params=None,
               cls_block_params={"dropout": 0, "attn_dropout": 0, "activation_dropout": 0}, fc_params=[],
               activation="gelu", trim=True, for_inference=kwargs.get("for_inference", False),
               use_amp=kwargs.get("use_amp", False))
    return ParTWrapper(**cfg), jet_model_info(data_config)


def get_loss(data_config: Any, **kwargs: Any) -> torch.nn.Module:
    return torch.nn.CrossEntropyLoss()
