"""DSA-ParT for weaver: ``weaver --network-config networks/dsa_part.py -o dsa_enabled True ...``.

Every option of ``weaver_ext.dsa.DSAConfig`` (ParT's plus the DSA ones) is settable with ``-o KEY VALUE``
(strings need inner quotes: ``-o dsa_mode "'indexer'"``). With ``dsa_enabled`` False (the default) this is ParT.
The loss adds the model's DSA regularisers and indexer distillation; DSA statistics are logged every epoch.
``-o seed N`` makes training reproducible and ``--load-epoch`` exact (weaver_ext/reproducibility.py).
"""

from weaver_ext.dsa import DSAConfig, DSAParticleTransformer
from weaver_ext.network import build_part_tagger
from weaver_ext.reproducibility import apply_seed_option
from weaver_ext.weaver_hooks import bind_loss, network_hooks, register_model

WHERE = "networks/dsa_part.py"


def get_model(data_config, **kwargs):
    model, info = build_part_tagger(data_config, apply_seed_option(kwargs), where=WHERE, config_cls=DSAConfig,
                                    model_cls=DSAParticleTransformer)
    register_model(model)
    return model, info


def get_loss(data_config, **kwargs):
    return bind_loss()


get_train_fn, get_evaluate_fn = network_hooks("classification")
