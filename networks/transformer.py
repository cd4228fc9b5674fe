"""Configurable jet transformer: ``weaver --network-config networks/transformer.py -o attention "'differential'"``.

Options: every ``ParTConfig`` field (value_residual, num_registers, attn_window, attn_knn, grad_checkpoint,
pos_encoding, latent_tokens, head, layer_scale_init, ffn_activation, attn_backend, ...), the differential-attention
options, ``attention`` ('softmax' | 'differential') and ``pair_bias`` (False: plain transformer). See
docs/variants.md.
"""

import torch

from weaver_ext.network import build_part_tagger
from weaver_ext.reproducibility import apply_seed_option
from weaver_ext.transformer import ConfigurableTransformer, TransformerConfig
from weaver_ext.weaver_hooks import network_hooks


def get_model(data_config, **kwargs):
    return build_part_tagger(data_config, apply_seed_option(kwargs),
                             where="networks/transformer.py", config_cls=TransformerConfig,
                             model_cls=ConfigurableTransformer)


def get_loss(data_config, **kwargs):
    return torch.nn.CrossEntropyLoss()


get_train_fn, get_evaluate_fn = network_hooks("classification")
