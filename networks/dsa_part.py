"""DSA-ParT for weaver: ``weaver --network-config networks/dsa_part.py -o dsa_mode "'indexer'" ...``.

A preset of networks/part.py with ``attention='dsa'`` (top-k by default, ``-o dsa_mode "'indexer'"`` for the
lightning indexer; ``-o dsa_maps "'differential'"`` gives each kept set differential maps). Every ParT and DSA
option (``weaver_ext.dsa.SparsityConfig``) is settable with ``-o KEY VALUE``; ``-o dsa_enabled False`` (the option
of earlier versions) gives dense ParT. The loss adds the DSA regularisers and indexer distillation; DSA statistics
are logged every epoch. ``-o seed N`` makes training reproducible and ``--load-epoch`` exact.
"""

from weaver_ext.network_config import part_family

get_model, get_loss, get_train_fn, get_evaluate_fn = part_family("networks/dsa_part.py", defaults={"attention": "dsa"})
