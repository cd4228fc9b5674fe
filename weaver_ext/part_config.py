"""The options of every ParT-family model, composed of small groups instead of one inheritance chain.

``ParTConfig`` = embedding + blocks + attention + sparsity + refinements + head + inference. weaver's ``-o`` options
stay flat (``config.from_options`` routes each name to its group), so ``-o num_heads 4`` and ``-o attention
"'dsa'"`` work in every network config of the family. Defaults are the published ParT recipe; a preset (e.g. the
hit transformer) passes its own defaults instead of subclassing. ``upgrade_options`` keeps option names from before
the groups working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .attention_kinds import get_attention_kind
from .config import OptionError, from_options
from .dsa.schedule import SparsityConfig
from .positional import PosEncoding

__all__ = [
    "AttentionConfig",
    "BlocksConfig",
    "EmbeddingConfig",
    "HeadConfig",
    "InferenceConfig",
    "ParTConfig",
    "RefinementsConfig",
    "PART_VERSIONS",
    "part_config",
    "upgrade_options",
    "version_defaults",
]

_PAIR_INPUT_DIMS = {"pp": 4, "ee": 6, "xyzt": 7}


@dataclass(frozen=True)
class EmbeddingConfig:
    """Particle and pair (interaction) embeddings, weaver-core's ``Embed`` and ``PairEmbed``."""

    input_dim: int = 0  # fixed by the data config
    embed_dims: tuple[int, ...] = (128, 512, 128)
    pair_input_type: str = "pp"
    pair_input_dim: int | None = None  # None: 4 for 'pp', 6 for 'ee', 7 for 'xyzt'
    pair_extra_dim: int = 0
    pair_embed_dims: tuple[int, ...] = (64, 64, 64)
    pair_bias: bool = True  # False: no pair embedding at all (a plain transformer)
    remove_self_pair: bool = False
    # False as in the recipe that trained the published ParT (particle_transformer's example_ParticleTransformer.py);
    # weaver-core's class default is True. Same state_dict either way, so a wrong value loads silently.
    use_pre_activation_pair: bool = False
    activation: Literal["gelu", "relu"] = "gelu"

    @property
    def embed_dim(self) -> int:
        return self.embed_dims[-1] if self.embed_dims else self.input_dim

    @property
    def resolved_pair_input_dim(self) -> int:
        if not self.pair_bias:
            return 0
        if self.pair_input_dim is not None:
            return self.pair_input_dim
        return _PAIR_INPUT_DIMS[self.pair_input_type.split(":")[0]]

    @property
    def resolved_pair_extra_dim(self) -> int:
        return self.pair_extra_dim if self.pair_bias else 0


@dataclass(frozen=True)
class BlocksConfig:
    """The transformer blocks: sizes, dropouts, feed-forward, initialisation."""

    num_heads: int = 8
    num_layers: int = 8
    num_cls_layers: int = 2
    ffn_ratio: int = 4
    ffn_activation: Literal["gelu", "relu", "swiglu"] = "gelu"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.1
    layer_scale_init: float | None = None
    grad_checkpoint: bool = False  # torch.utils.checkpoint per particle block while training
    # the switches that weaver-core's ParT versions 2-3.6 set (see PART_VERSIONS); defaults are version 1
    part_version: float = 1  # weaver-core's ParticleTransformer(version=...): 1, 2, 3, 3.5 or 3.6 (sets defaults)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # every norm of the model (blocks, QK, final)
    bias: bool = True  # biases of the attention, FFN, pair-embedding convolutions and hidden head layers
    block_scales: bool = True  # ParT v1's post-attention/FFN LayerNorms, per-head and residual scales
    drop_path: float = 0.0  # stochastic depth per block (training only)
    qk_norm: bool = False  # norm over the head dimension of q and k
    attn_gate: bool = False  # out *= sigmoid(gate_proj(query)), elementwise, before out_proj
    weight_init: Literal["moco", "timm"] | None = "moco"
    fix_init: bool = True


@dataclass(frozen=True)
class AttentionConfig:
    """Which attention kind the particle blocks use (``attention_kinds.ATTENTION_KINDS``) and how it runs."""

    attention: str = "softmax"  # a registered kind; 'dsa' = 'dsa_' + dsa_mode; 'dense' = 'softmax'
    attn_backend: str | None = None  # None: the kind's default (sdpa; math for the DSA kinds)
    attention_layers: tuple[int, ...] | None = None  # particle blocks that use the kind (None: all; others softmax)
    dsa_mode: Literal["topk", "indexer"] = "topk"  # what attention='dsa' means
    dsa_maps: Literal["softmax", "differential"] = "softmax"  # attention maps over the keys a DSA kind keeps
    diff_lambda_init: float | None = None  # differential maps: fixed lambda_init (None: 0.8 - 0.6 exp(-0.3 depth))
    diff_cls_blocks: bool = False  # attention='differential': class-attention blocks use it too

    @property
    def kind(self) -> str:
        """The registry name the option resolves to."""
        if self.attention == "dsa":
            return f"dsa_{self.dsa_mode}"
        return "softmax" if self.attention == "dense" else self.attention


@dataclass(frozen=True)
class RefinementsConfig:
    """Optional transformer refinements, all off by default (the published ParT); see docs/variants.md."""

    value_residual: bool = False  # mix layer-0 values into later layers (learned per-token, per-head gate)
    num_registers: int = 0  # learned extra tokens in the particle blocks; zero pair bias; not pooled
    attn_window: int = 0  # > 0: attend only within +-attn_window in pT rank
    attn_knn: int = 0  # > 0: attend only to the attn_knn nearest particles in (eta, phi)
    pos_encoding: PosEncoding = "none"  # 'sequence' (pT rank), 'eta_phi' (2D sin/cos), 'fourier' (random features)
    pos_fourier_features: int = 32
    pos_fourier_scale: float = 10.0
    latent_tokens: int = 0  # > 0: Perceiver encoder, particles -> latent_tokens latents after the particle blocks
    latent_layers: int = 2  # self-attention blocks over the latents


@dataclass(frozen=True)
class HeadConfig:
    """Pooling and the output layers."""

    num_classes: int | None = None  # fixed by the data config (None: no head, the pooled token is the output)
    global_token: bool = False  # a learned token first in the particle blocks, pooled instead of class attention
    head: Literal["class_attention", "latent"] = "class_attention"  # 'latent': head_queries averaged queries
    head_queries: int = 4
    fc_params: tuple[tuple[int, float], ...] = ()
    task: Literal["classification", "regression"] = "classification"


@dataclass(frozen=True)
class InferenceConfig:
    """Execution paths (bucketed inference and training, precision, trimming) and the flags weaver injects."""

    # eval without gradients: 'bucketed' runs weaver_ext.fast_inference with identical outputs
    inference_path: Literal["standard", "bucketed"] = "standard"
    bucket_size: int = 32  # about this many jets per length bucket: ceil(n / bucket_size) buckets, fewest padded slots
    # training forwards: 'bucketed' runs each length bucket cut to its own longest jet (weaver_ext.bucketed), with
    # the padded path's BatchNorm statistics, losses and gradients; 'padded' runs the whole batch padded (weaver's
    # way); 'auto': bucketed on CPU, padded on GPU (where the bucketed path has not been measured yet)
    training_path: Literal["auto", "bucketed", "padded"] = "auto"
    inference_dtype: Literal["fp32", "bf16"] = "fp32"
    # the bucketed inference path through torch.compile (inductor, frozen weights): ~30 s to compile, then 1.2-1.7x
    # faster on CPU (docs/benchmarks.md); the engine is cached and rebuilt when the weights change
    inference_compile: bool = False
    trim: bool = True
    for_inference: bool = False  # injected by weaver (--export-onnx / --predict)
    use_amp: bool = False  # injected by weaver (--use-amp)
    compile_model: bool = False  # injected by weaver (--compile)


@dataclass(frozen=True)
class ParTConfig:
    """All ParT options, one group per concern; defaults are the published recipe (weaver-core ``version=1`` built as
    the particle_transformer repository's ``example_ParticleTransformer.py`` builds it)."""

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    blocks: BlocksConfig = field(default_factory=BlocksConfig)
    attn: AttentionConfig = field(default_factory=AttentionConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    refine: RefinementsConfig = field(default_factory=RefinementsConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        refine, num_layers = self.refine, self.blocks.num_layers
        for name in ("num_registers", "attn_window", "attn_knn", "latent_tokens"):
            if getattr(refine, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(refine, name)}")
        if num_layers == 0 and (refine.num_registers or refine.value_residual or refine.attn_window or refine.attn_knn):
            raise ValueError("num_registers, value_residual, attn_window and attn_knn need num_layers > 0")
        if self.blocks.part_version not in PART_VERSIONS:
            raise ValueError(f"option part_version={self.blocks.part_version}: weaver-core's ParT versions are "
                             f"{', '.join(f'{v:g}' for v in PART_VERSIONS)}")
        if self.head.global_token and (self.blocks.num_cls_layers > 0 or self.head.head != "class_attention"
                                       or refine.num_registers or refine.latent_tokens or refine.attn_window
                                       or refine.attn_knn):
            raise ValueError("global_token=True needs num_cls_layers=0 and no latent head, registers, latent tokens "
                             "or local attention (the token is pooled itself and sees every particle)")
        if self.head.head == "latent" and self.blocks.num_cls_layers < 1:
            raise ValueError("head='latent' needs num_cls_layers >= 1 (the number of its cross-attention blocks)")
        layers = self.attn.attention_layers
        if layers is not None and any(not 0 <= i < num_layers for i in layers):
            bad = [i for i in layers if not 0 <= i < num_layers]
            raise ValueError(f"option attention_layers={layers}: {bad} not in 0..{num_layers - 1}")
        kind = get_attention_kind(self.attn.kind)
        if kind.validate is not None:
            kind.validate(self)

    @property
    def embed_dim(self) -> int:
        return self.embedding.embed_dim

    @property
    def kind_layers(self) -> tuple[int, ...]:
        """Particle blocks that use the configured attention kind (the others use softmax)."""
        num_layers = self.blocks.num_layers
        layers = self.attn.attention_layers
        return tuple(range(num_layers)) if layers is None else tuple(sorted(set(layers)))

    @property
    def sparse_layers(self) -> tuple[int, ...]:
        """Particle blocks with sparse (DSA) attention."""
        return self.kind_layers if get_attention_kind(self.attn.kind).sparse else ()


_V2 = {"ffn_activation": "swiglu", "block_scales": False}
_V3 = {**_V2, "norm": "rmsnorm", "bias": False, "dropout": 0.0, "attn_dropout": 0.0, "activation_dropout": 0.0,
       "drop_path": 0.1}
_V35 = {**_V3, "qk_norm": True, "attn_gate": True}
# weaver-core 0.5.3 ParticleTransformer(version=V) as our options (weaver/nn/model/ParticleTransformer.py)
PART_VERSIONS: dict[float, dict[str, Any]] = {
    1: {},
    2: _V2,
    3: _V3,
    3.5: _V35,
    3.6: {**_V35, "global_token": True, "num_cls_layers": 0},
}


def version_defaults(options: dict[str, Any], defaults: dict[str, Any] | None, *, where: str) -> dict[str, Any]:
    """A preset's ``defaults`` under the options that ``-o part_version V`` implies (explicit options win)."""
    version = options.get("part_version", (defaults or {}).get("part_version", 1))
    if isinstance(version, bool) or not isinstance(version, (int, float)) or version not in PART_VERSIONS:
        raise OptionError(f"{where}: option 'part_version' must be one of "
                          f"{', '.join(f'{v:g}' for v in PART_VERSIONS)}, got {version!r}")
    return {**PART_VERSIONS[version], **(defaults or {})}


def upgrade_options(options: dict[str, Any], *, where: str) -> dict[str, Any]:
    """Options from before the attention registry, rewritten to their current form (a copy).

    ``dsa_enabled True`` means ``attention 'dsa'`` and ``dsa_enabled False`` means softmax attention;
    ``dsa_layers`` is ``attention_layers``. A contradiction is a one-line error that names the current form.
    """
    options = dict(options)
    if "dsa_layers" in options:
        if "attention_layers" in options:
            raise OptionError(f"{where}: give attention_layers only (dsa_layers is its old name)")
        options["attention_layers"] = options.pop("dsa_layers")
    if "dsa_enabled" in options:
        enabled = options.pop("dsa_enabled")
        if not isinstance(enabled, bool):
            raise OptionError(f"{where}: option 'dsa_enabled' expects bool, got {enabled!r}; it is now written "
                              "-o attention \"'dsa'\"")
        given = options.get("attention")
        if given is not None and str(given).startswith("dsa") != enabled:
            raise OptionError(f"{where}: dsa_enabled={enabled} contradicts attention={given!r}; "
                              "give -o attention only (e.g. \"'dsa'\" or \"'softmax'\")")
        options.setdefault("attention", "dsa" if enabled else "softmax")
    return options


def part_config(**options: Any) -> ParTConfig:
    """A ``ParTConfig`` from flat options, as ``-o`` gives them (tests, scripts): ``part_config(num_layers=2)``."""
    options = upgrade_options(options, where="part_config")
    return from_options(ParTConfig, options, where="part_config",
                        defaults=version_defaults(options, None, where="part_config"))
