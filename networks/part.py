"""ParticleTransformer (ParT) for weaver: ``weaver --network-config networks/part.py``.

Every option of ``weaver_ext.part.ParTConfig`` is settable with ``-o KEY VALUE`` (strings need inner quotes,
``-o attn_backend "'math'"``); an unknown option is an error that lists the valid ones.
"""

import torch

from weaver_ext.network import build_part_tagger


def get_model(data_config, **kwargs):
    return build_part_tagger(data_config, kwargs, where="networks/part.py")


def get_loss(data_config, **kwargs):
    return torch.nn.CrossEntropyLoss()
