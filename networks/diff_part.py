"""ParT with differential attention (arXiv:2410.05258): ``weaver --network-config networks/diff_part.py``.

A preset of networks/part.py with ``attention='differential'``: every ParT option plus ``diff_lambda_init`` (None =
0.8 - 0.6 exp(-0.3 depth)) and ``diff_cls_blocks`` is settable with ``-o KEY VALUE``.
"""

from weaver_ext.network_config import part_family

get_model, get_loss, get_train_fn, get_evaluate_fn = part_family("networks/diff_part.py",
                                                                 defaults={"attention": "differential"})
