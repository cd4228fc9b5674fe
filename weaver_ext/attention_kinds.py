"""The attention kinds, by name: what ``-o attention NAME`` selects in every ParT-family network config.

A kind builds the *core* of one block's ``MultiheadAttention`` (``attention.AttentionCore``) from a ``LayerSpec``.
Adding a kind is one new file with its core and a builder, plus one line in ``ATTENTION_KINDS`` (or one
``register_attention_kind`` call from outside the library); see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .attention import AttentionCore, DenseCore, LayerSpec
from .config import OptionError
from .dsa.attention import build_indexer, build_topk, validate_dsa
from .maps import DifferentialMaps

__all__ = ["ATTENTION_KINDS", "AttentionKind", "build_core", "get_attention_kind",
           "register_attention_kind"]


@dataclass(frozen=True)
class AttentionKind:
    """One attention kind: how to build its core, and what the model must know about it."""

    build: Callable[[LayerSpec], AttentionCore]
    description: str
    sparse: bool = False  # keeps a subset of keys: DSA schedule, statistics and auxiliary loss apply
    cross_attention: bool = True  # can run in class-attention blocks (keys other than the queries)
    default_backend: str = "sdpa"  # used when -o attn_backend is not given
    validate: Callable[[Any], None] | None = None  # raises a one-line ValueError for unsupported option combinations


def _softmax(spec: LayerSpec) -> AttentionCore:
    return DenseCore(backend=spec.backend, dropout=spec.dropout, layer=spec.layer)


def _differential(spec: LayerSpec) -> AttentionCore:
    maps = DifferentialMaps(spec.embed_dim // spec.num_heads, depth=spec.depth,
                            lambda_init=spec.cfg.attn.diff_lambda_init)
    return DenseCore(maps=maps, backend=spec.backend, dropout=spec.dropout, layer=spec.layer)


ATTENTION_KINDS: dict[str, AttentionKind] = {
    "softmax": AttentionKind(_softmax, "ParT: softmax over all keys with the pair bias"),
    "differential": AttentionKind(_differential, "two softmax maps subtracted (arXiv:2410.05258)"),
    "dsa_topk": AttentionKind(build_topk, "dynamic sparse attention: each query keeps its top-k keys by score",
                              sparse=True, cross_attention=False, default_backend="math", validate=validate_dsa),
    "dsa_indexer": AttentionKind(build_indexer, "dynamic sparse attention: a lightning indexer picks the keys, "
                                 "memory N x k", sparse=True, cross_attention=False, default_backend="math",
                                 validate=validate_dsa),
}


def register_attention_kind(name: str, kind: AttentionKind) -> None:
    """Add a kind to the registry (``-o attention NAME`` then selects it); a taken name is an error."""
    if name in ATTENTION_KINDS or name in ("dsa", "dense"):
        raise ValueError(f"attention kind {name!r} is already registered")
    ATTENTION_KINDS[name] = kind


def get_attention_kind(name: str) -> AttentionKind:
    """Look up a kind by name; unknown names fail with the list of valid ones."""
    try:
        return ATTENTION_KINDS[name]
    except KeyError:
        raise OptionError(f"option 'attention': unknown kind {name!r}; available: {', '.join(ATTENTION_KINDS)} "
                          "(and 'dsa' = 'dsa_' + dsa_mode)") from None


def build_core(cfg: Any, *, layer: int, cls_block: bool = False) -> AttentionCore:
    """The attention core of particle block ``layer`` (or class block ``layer``) of a model with config ``cfg``.

    Blocks outside ``attention_layers``, and class blocks of kinds that cannot cross-attend (or of differential
    attention without ``diff_cls_blocks``), use softmax.
    """
    attn, blocks = cfg.attn, cfg.blocks
    name = attn.kind
    uses_kind = layer in cfg.kind_layers if not cls_block else _kind_in_class_blocks(cfg)
    kind = get_attention_kind(name if uses_kind else "softmax")
    dropout = 0.0 if cls_block else blocks.attn_dropout
    spec = LayerSpec(embed_dim=cfg.embed_dim, num_heads=blocks.num_heads,
                     layer=blocks.num_layers + layer if cls_block else layer,
                     depth=blocks.num_layers + layer if cls_block else layer, dropout=dropout,
                     backend=attn.attn_backend or kind.default_backend, cfg=cfg)
    return kind.build(spec)


def _kind_in_class_blocks(cfg: Any) -> bool:
    kind = get_attention_kind(cfg.attn.kind)
    if not kind.cross_attention:
        return False
    return cfg.attn.kind != "differential" or cfg.attn.diff_cls_blocks
