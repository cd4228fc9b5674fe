"""ParticleTransformer (ParT) for weaver: ``weaver --network-config networks/part.py``.

Every option of ``weaver_ext.part_config.ParTConfig`` is settable with ``-o KEY VALUE`` (strings need inner quotes,
``-o attn_backend "'math'"``), including the attention kind (``-o attention "'differential'"`` or ``"'dsa'"``, see
docs/ARCHITECTURE.md); an unknown option is an error that lists the valid ones. ``-o seed N`` makes training
reproducible and ``--load-epoch`` exact (weaver_ext/reproducibility.py).
"""

from weaver_ext.network_config import part_family

get_model, get_loss, get_train_fn, get_evaluate_fn = part_family("networks/part.py")
