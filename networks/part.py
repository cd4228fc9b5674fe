"""ParticleTransformer (ParT) for weaver: ``weaver --network-config networks/part.py``.

Every option of ``weaver_ext.part.ParTConfig`` is settable with ``-o KEY VALUE`` (strings need inner quotes,
``-o attn_backend "'math'"``); an unknown option is an error that lists the valid ones. ``-o seed N`` makes
training reproducible and ``--load-epoch`` exact (weaver_ext/reproducibility.py).
"""

import torch

from weaver_ext.network import build_part_tagger
from weaver_ext.reproducibility import apply_seed_option
from weaver_ext.weaver_hooks import network_hooks


def get_model(data_config, **kwargs):
    return build_part_tagger(data_config, apply_seed_option(kwargs), where="networks/part.py")


def get_loss(data_config, **kwargs):
    return torch.nn.CrossEntropyLoss()


get_train_fn, get_evaluate_fn = network_hooks("classification")
