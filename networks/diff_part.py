"""ParT with differential attention (arXiv:2410.05258): ``weaver --network-config networks/diff_part.py``.

Every ``ParTConfig`` option plus ``diff_lambda_init`` (None = 0.8 - 0.6 exp(-0.3 depth)) and ``diff_cls_blocks``
is settable with ``-o KEY VALUE``.
"""

import torch

from weaver_ext.diff_attention import DiffParTConfig, DiffParticleTransformer
from weaver_ext.network import build_part_tagger
from weaver_ext.reproducibility import apply_seed_option
from weaver_ext.weaver_hooks import network_hooks


def get_model(data_config, **kwargs):
    return build_part_tagger(data_config, apply_seed_option(kwargs),
                             where="networks/diff_part.py", config_cls=DiffParTConfig,
                             model_cls=DiffParticleTransformer)


def get_loss(data_config, **kwargs):
    return torch.nn.CrossEntropyLoss()


get_train_fn, get_evaluate_fn = network_hooks("classification")
