"""Hit transformer for muon-track regression: ``weaver --regression-mode -n networks/track_transformer.py``.

Data config: data/Tracks/tracks.yaml (inputs hit_points, hit_features, hit_mask; label (N, 6)). Every option of
``weaver_ext.track.TrackConfig`` is settable with ``-o KEY VALUE`` (strings need inner quotes), e.g.
``-o attention "'dsa'"`` (DSA indexer attention, memory N x topk), ``-o latent_tokens 16`` (Perceiver latents),
``-o max_hits 256`` (keep the highest-charge hits), ``-o track_head "'mlp'"``, ``-o direction_weight 2.0``.
An unknown option is an error listing the valid ones; ``-o seed N`` makes training reproducible and
``--load-epoch`` exact (weaver_ext/reproducibility.py). See docs/tracks.md.
"""

from weaver_ext.reproducibility import apply_seed_option, without_seed
from weaver_ext.track import build_track_loss, build_track_model
from weaver_ext.weaver_hooks import bind_loss, network_hooks, register_model

WHERE = "networks/track_transformer.py"


def get_model(data_config, **kwargs):
    model, info = build_track_model(data_config, apply_seed_option(kwargs), where=WHERE)
    register_model(model)
    return model, info


def get_loss(data_config, **kwargs):
    return bind_loss(build_track_loss(data_config, without_seed(kwargs), where=WHERE))


get_train_fn, get_evaluate_fn = network_hooks("regression")
