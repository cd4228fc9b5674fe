"""Hit transformer for muon-track regression: ``weaver --regression-mode -n networks/track_transformer.py``.

Data config: data/Tracks/tracks.yaml (inputs hit_points, hit_features, hit_mask; label (N, 6)). Every option of
``weaver_ext.track.TrackConfig`` is settable with ``-o KEY VALUE`` (strings need inner quotes), e.g.
``-o attention "'dsa'"`` (DSA indexer attention, memory N x topk), ``-o latent_tokens 16`` (Perceiver latents),
``-o max_hits 256`` (keep the highest-charge hits), ``-o track_head "'mlp'"``, ``-o direction_weight 2.0``.
An unknown option is an error listing the valid ones; ``-o seed N`` makes training reproducible and
``--load-epoch`` exact (weaver_ext/reproducibility.py). See docs/tracks.md.
"""

from weaver_ext.network_config import track_family

get_model, get_loss, get_train_fn, get_evaluate_fn = track_family("networks/track_transformer.py")
