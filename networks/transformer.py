"""Configurable jet transformer: ``weaver --network-config networks/transformer.py -o attention "'differential'"``.

The same model and options as networks/part.py (kept for the commands of earlier versions): any attention kind,
``pair_bias`` (False: plain transformer), and every refinement (value_residual, num_registers, attn_window,
attn_knn, grad_checkpoint, pos_encoding, latent_tokens, head, ...). See docs/variants.md.
"""

from weaver_ext.network_config import part_family

get_model, get_loss, get_train_fn, get_evaluate_fn = part_family("networks/transformer.py")
