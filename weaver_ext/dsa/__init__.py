"""Dynamic Sparse Attention (DSA-ParT): options and schedule, indexer selection, sparse cores, statistics.

The kinds ``dsa_topk`` and ``dsa_indexer`` of ``attention_kinds.py``; see docs/dsa.md.
"""

from .attention import IndexerCore, TopkCore, selected_pair_bias, topk_keep_mask
from .indexer import LightningIndexer, Selection, block_key_bounds, block_score_bound, key_blocks, select_keys
from .schedule import SparsityConfig, kept_fraction, keys_per_query
from .statistics import AUX_NAMES, STAT_NAMES, AuxChannel

__all__ = [
    "AUX_NAMES",
    "STAT_NAMES",
    "AuxChannel",
    "IndexerCore",
    "LightningIndexer",
    "Selection",
    "SparsityConfig",
    "TopkCore",
    "block_key_bounds",
    "block_score_bound",
    "kept_fraction",
    "key_blocks",
    "keys_per_query",
    "select_keys",
    "selected_pair_bias",
    "topk_keep_mask",
]
