"""Particle Transformer (ParT, arXiv:2202.03772) with pluggable attention, built from weaver-core's pieces.

Particle embedding, pair (interaction) embedding, sequence trimmer and weight initialisation are weaver-core's own;
the blocks are ours (``blocks.py``) so the attention core can be swapped. Module and parameter names match
weaver-core's ``ParticleTransformer`` so a state_dict of it loads unchanged and gives the same outputs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from weaver.nn.model.ParticleTransformer import (
    Embed,
    PairEmbed,
    SequenceTrimmer,
    build_sparse_tensor,
    init_weights_vit_moco,
    init_weights_vit_timm,
    named_apply,
)

from .attention import MultiheadAttention, ValueResidual
from .blocks import Block, BlockConfig
from .latent import LatentCrossAttention, LatentSelfAttention
from .positional import PosEncoding, PositionalEncoding, local_attention_mask

Tensor = torch.Tensor

# four-vector (px, py, pz, E) given to padded or masked particles where pair features are computed anyway: not zero,
# because atan2(0, 0) in the pair features is NaN once exported to ONNX
MASKED_VECTOR = (1.0, 0.0, 0.0, 1.0)


def masked_vector_like(v: Tensor) -> Tensor:
    """``MASKED_VECTOR`` as a (1, 4, 1) tensor with v's dtype and device, to fill (B, 4, P) four-vectors."""
    return torch.tensor(MASKED_VECTOR, dtype=v.dtype, device=v.device).view(1, 4, 1)

_PAIR_INPUT_DIMS = {"pp": 4, "ee": 6, "xyzt": 7}


@dataclass(frozen=True)
class ParTConfig:
    """All ParT options; defaults are the published recipe (weaver-core ``version=1`` built as the particle_transformer
    repository's ``example_ParticleTransformer.py`` builds it), so its checkpoints give its outputs unchanged."""

    input_dim: int
    num_classes: int | None
    # embeddings
    embed_dims: tuple[int, ...] = (128, 512, 128)
    pair_input_type: str = "pp"
    pair_input_dim: int | None = None  # None: 4 for 'pp', 6 for 'ee', 7 for 'xyzt'
    pair_extra_dim: int = 0
    pair_embed_dims: tuple[int, ...] = (64, 64, 64)
    remove_self_pair: bool = False
    # False as in the recipe that trained the published ParT (particle_transformer's example_ParticleTransformer.py);
    # weaver-core's class default is True. Same state_dict either way, so a wrong value loads silently.
    use_pre_activation_pair: bool = False
    activation: Literal["gelu", "relu"] = "gelu"
    # transformer
    num_heads: int = 8
    num_layers: int = 8
    num_cls_layers: int = 2
    ffn_ratio: int = 4
    ffn_activation: Literal["gelu", "relu", "swiglu"] = "gelu"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.1
    layer_scale_init: float | None = None
    attn_backend: str = "sdpa"
    # transformer refinements (all off by default: the published ParT); see docs/variants.md
    value_residual: bool = False  # mix layer-0 values into later layers (learned per-token, per-head gate)
    num_registers: int = 0  # learned extra tokens in the particle blocks; zero pair bias; not pooled
    attn_window: int = 0  # > 0: attend only within +-attn_window in pT rank
    attn_knn: int = 0  # > 0: attend only to the attn_knn nearest particles in (eta, phi)
    grad_checkpoint: bool = False  # torch.utils.checkpoint per particle block while training
    pos_encoding: PosEncoding = "none"  # 'sequence' (pT rank), 'eta_phi' (2D sin/cos), 'fourier' (random features)
    pos_fourier_features: int = 32
    pos_fourier_scale: float = 10.0
    latent_tokens: int = 0  # > 0: Perceiver encoder, particles -> latent_tokens latents after the particle blocks
    latent_layers: int = 2  # self-attention blocks over the latents
    head: Literal["class_attention", "latent"] = "class_attention"  # 'latent': head_queries averaged queries
    head_queries: int = 4
    # head
    fc_params: tuple[tuple[int, float], ...] = ()
    task: Literal["classification", "regression"] = "classification"
    # inference (eval without gradients): 'bucketed' runs weaver_ext.fast_inference with identical outputs
    inference_path: Literal["standard", "bucketed"] = "standard"
    bucket_size: int = 32  # jets per length bucket of the bucketed path
    inference_dtype: Literal["fp32", "bf16"] = "fp32"
    # misc
    trim: bool = True
    weight_init: Literal["moco", "timm"] | None = "moco"
    fix_init: bool = True
    # injected by weaver
    for_inference: bool = False
    use_amp: bool = False
    compile_model: bool = False

    @property
    def resolved_pair_input_dim(self) -> int:
        if self.pair_input_dim is not None:
            return self.pair_input_dim
        return _PAIR_INPUT_DIMS[self.pair_input_type.split(":")[0]]

    @property
    def embed_dim(self) -> int:
        return self.embed_dims[-1] if self.embed_dims else self.input_dim

    def block_config(self, *, cls_block: bool = False) -> BlockConfig:
        """Particle blocks use the configured dropouts; class-attention blocks use none (as in ParT)."""
        drop = 0.0 if cls_block else None
        return BlockConfig(
            embed_dim=self.embed_dim,
            num_heads=self.num_heads,
            ffn_ratio=self.ffn_ratio,
            dropout=self.dropout if drop is None else drop,
            attn_dropout=self.attn_dropout if drop is None else drop,
            activation_dropout=self.activation_dropout if drop is None else drop,
            activation=self.ffn_activation,
            layer_scale_init=self.layer_scale_init,
            attn_backend=self.attn_backend,
        )


class ParticleTransformer(nn.Module):
    """ParT: particle embedding + pair-bias transformer blocks + class-attention blocks + MLP head."""

    def __init__(self, cfg: ParTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.for_inference = cfg.for_inference
        dim = cfg.embed_dim
        self.embed = (
            Embed(cfg.input_dim, cfg.embed_dims, activation=cfg.activation) if cfg.embed_dims else nn.Identity()
        )
        pair_dim = cfg.resolved_pair_input_dim
        self.pair_embed = (
            PairEmbed(
                pair_dim,
                cfg.pair_extra_dim,
                (*cfg.pair_embed_dims, cfg.num_heads),
                pairwise_lv_type=cfg.pair_input_type,
                remove_self_pair=cfg.remove_self_pair,
                use_pre_activation_pair=cfg.use_pre_activation_pair,
                for_onnx=cfg.for_inference,
                sparse_eval=(False, True) if cfg.compile_model else (True, True),
            )
            if cfg.pair_embed_dims is not None and pair_dim + cfg.pair_extra_dim > 0 and cfg.num_layers > 0
            else None
        )
        self.blocks = nn.ModuleList(self.make_block(i) for i in range(cfg.num_layers))
        self.cls_blocks = (
            nn.ModuleList(self.make_block(i, cls_block=True) for i in range(cfg.num_cls_layers))
            if cfg.num_cls_layers > 0 and cfg.head == "class_attention"
            else None
        )
        self._make_refinements(cfg)
        self.norm = nn.LayerNorm(dim)
        self.fc = self._make_head(cfg) if cfg.num_classes is not None else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.cls_blocks is not None else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.trimmer = SequenceTrimmer(enabled=cfg.trim and not cfg.for_inference, round_to_32=cfg.compile_model)
        if cfg.weight_init is not None:
            named_apply(init_weights_vit_moco if cfg.weight_init == "moco" else init_weights_vit_timm, self)
        if cfg.fix_init:
            for layer_id, block in enumerate(self.blocks, start=1):
                block.attn.out_proj.weight.data.div_(math.sqrt(2.0 * layer_id))
                block.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))

    def make_attention(self, index: int, *, cls_block: bool = False) -> MultiheadAttention | None:
        """Attention module of block ``index``; None = the default. Variants (differential attention) override it."""
        return None

    def make_block(self, index: int, *, cls_block: bool = False) -> Block:
        """One particle block (or class-attention block) built from the config and ``make_attention``."""
        block = Block(self.cfg.block_config(cls_block=cls_block),
                      attention=self.make_attention(index, cls_block=cls_block))
        if self.cfg.value_residual and not cls_block and index > 0:
            block.attn.enable_value_residual()
        return block

    def _make_refinements(self, cfg: ParTConfig) -> None:
        """Optional modules: positional encoding, register tokens, latent encoder and latent decoder head."""
        for name in ("num_registers", "attn_window", "attn_knn", "latent_tokens"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
        if cfg.num_layers == 0 and (cfg.num_registers or cfg.value_residual or cfg.attn_window or cfg.attn_knn):
            raise ValueError("num_registers, value_residual, attn_window and attn_knn need num_layers > 0")
        self.pos_encoding = None if cfg.pos_encoding == "none" else PositionalEncoding(
            cfg.pos_encoding, cfg.embed_dim, fourier_features=cfg.pos_fourier_features,
            fourier_scale=cfg.pos_fourier_scale)
        self.registers = nn.Parameter(torch.zeros(1, cfg.num_registers, cfg.embed_dim)) if cfg.num_registers else None
        if self.registers is not None:
            nn.init.trunc_normal_(self.registers, std=0.02)
        self.latent_encoder = self.latent_blocks = None
        if cfg.latent_tokens > 0:
            self.latent_encoder = LatentCrossAttention(cfg.block_config(), num_tokens=cfg.latent_tokens)
            self.latent_blocks = LatentSelfAttention(cfg.block_config(), num_layers=cfg.latent_layers)
        self.latent_head = None
        if cfg.head == "latent":
            if cfg.num_cls_layers < 1:
                raise ValueError("head='latent' needs num_cls_layers >= 1 (the number of its cross-attention blocks)")
            self.latent_head = LatentCrossAttention(cfg.block_config(cls_block=True), num_tokens=cfg.head_queries,
                                                    num_layers=cfg.num_cls_layers)

    @staticmethod
    def _make_head(cfg: ParTConfig) -> nn.Sequential:
        layers: list[nn.Module] = []
        in_dim = cfg.embed_dim
        for out_dim, drop_rate in cfg.fc_params:
            layers.append(nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Dropout(drop_rate)))
            in_dim = out_dim
        layers.append(nn.Linear(in_dim, cfg.num_classes))
        return nn.Sequential(*layers)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def encode(
        self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None, uu: Tensor | None = None,
        uu_idx: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Trim padding, embed particles and pairs and run the particle blocks.

        Returns particle tokens (B, L, E), the padding mask (B, L) with True for padding, and the pair bias.
        """
        with torch.no_grad():
            if uu_idx is not None and not self.for_inference:
                uu = build_sparse_tensor(uu, uu_idx, x.size(-1))
            x, v, mask, uu = self.trimmer(x, v, mask, uu)
        return self.encode_trimmed(x, v, mask, self.pair_bias(v, uu, mask))

    def pair_bias(self, v: Tensor | None, uu: Tensor | None, mask: Tensor) -> Tensor | None:
        """The dense pair-interaction bias (B, H, L, L), or None without pair inputs."""
        if (v is None and uu is None) or self.pair_embed is None:
            return None
        if not mask.any():  # only empty jets: no pair to embed (weaver's sparse PairEmbed fails on zero pairs)
            ref = v if v is not None else uu
            return ref.new_zeros(mask.size(0), self.pair_embed.out_dim, mask.size(-1), mask.size(-1))
        if v is not None and self.cfg.for_inference:
            # the dense (export) path embeds padded pairs too: zero padding would give atan2(0, 0), NaN in ONNX
            v = torch.where(mask.bool(), v, masked_vector_like(v))
        return self.pair_embed(v, uu=uu, mask=mask)

    def encode_trimmed(
        self, x: Tensor, v: Tensor | None, mask: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Everything after trimming and the pair embedding (shared with the fast inference path)."""
        mask = mask.bool()
        padding_mask = ~mask.squeeze(1)
        x = self.embed(x).masked_fill(~mask.transpose(1, 2), 0)
        if self.pos_encoding is not None:
            self._need_vectors(v, "pos_encoding")
            x = x + self.pos_encoding(v, mask).to(x.dtype)
        x = self.run_blocks(x, v, mask, padding_mask, bias)
        if self.latent_encoder is not None:
            x = self.latent_blocks(self.latent_encoder(x, padding_mask))
            padding_mask, bias = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device), None
        return x, padding_mask, bias

    @staticmethod
    def _need_vectors(v: Tensor | None, option: str) -> None:
        if v is None:
            raise ValueError(f"ParT option {option} needs the particle four-vectors (pf_vectors)")

    def run_blocks(self, x: Tensor, v: Tensor | None, mask: Tensor, padding_mask: Tensor,
                   bias: Tensor | None) -> Tensor:
        """The particle blocks, with registers, local masks, value residual and checkpointing when configured."""
        cfg = self.cfg
        local = None
        if cfg.attn_window or cfg.attn_knn:
            self._need_vectors(v, "attn_window/attn_knn")
            local = local_attention_mask(v, mask, window=cfg.attn_window, knn=cfg.attn_knn)
        num_particles = x.size(1)
        if self.registers is not None:
            x = torch.cat((x, self.registers.expand(x.size(0), -1, -1).to(x.dtype)), dim=1)
            padding_mask = F.pad(padding_mask, (0, cfg.num_registers), value=False)
            bias = None if bias is None else F.pad(bias, (0, cfg.num_registers, 0, cfg.num_registers))
            local = None if local is None else F.pad(local, (0, cfg.num_registers, 0, cfg.num_registers))
        if local is not None:
            local = local.to(x.dtype).expand(-1, cfg.num_heads, -1, -1)
            bias = local if bias is None else bias + local
        state = ValueResidual() if cfg.value_residual else None
        use_checkpoint = cfg.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_checkpoint:
                x = checkpoint(block, x, padding_mask=padding_mask, bias=bias, value_residual=state,
                               use_reentrant=False)
            else:
                x = block(x, padding_mask=padding_mask, bias=bias, value_residual=state)
        return x[:, :num_particles]

    def pool(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """Class-attention pooling (or a masked mean when there are no class blocks), then LayerNorm."""
        if self.latent_head is not None:
            pooled = self.latent_head(x, padding_mask).mean(dim=1)
        elif self.cls_blocks is not None:
            token = self.cls_token.expand(x.size(0), -1, -1)
            for block in self.cls_blocks:
                token = block(x, x_cls=token, padding_mask=padding_mask)
            pooled = token.squeeze(1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return self.norm(pooled)

    @property
    def supports_fast_inference(self) -> bool:
        """Whether ``FastParT`` reproduces this model (subclasses with their own encode path say no)."""
        return True

    def use_fast_inference(self, uu: Tensor | None, uu_idx: Tensor | None) -> bool:
        """The bucketed path runs in eval without gradients, outside ONNX tracing, for kinematic pair inputs."""
        if self.cfg.inference_path != "bucketed" or self.training or torch.is_grad_enabled():
            return False
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or uu is not None or uu_idx is not None:
            return False
        if not self.supports_fast_inference:
            raise ValueError(f"inference_path='bucketed' is not supported by {type(self).__name__} with these options")
        return True

    def forward(
        self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None, uu: Tensor | None = None,
        uu_idx: Tensor | None = None,
    ) -> Tensor:
        """x: (B, C, L) features; v: (B, 4, L) (px, py, pz, E); mask: (B, 1, L), 1 for real particles."""
        if mask is None:
            mask = torch.ones_like(x[:, :1])
        if self.use_fast_inference(uu, uu_idx):
            from .fast_inference import FastInferenceConfig, FastParT

            # built per call on purpose: folding a few small matrices costs microseconds and can never go stale
            # after load_state_dict (the bf16 option also copies the weights per call: ~10 ms per batch)
            fast_cfg = FastInferenceConfig(bucket_size=self.cfg.bucket_size, dtype=self.cfg.inference_dtype)
            return FastParT(self, fast_cfg)(x, v, mask)
        tokens, padding_mask, _ = self.encode(x, v, mask, uu, uu_idx)
        pooled = self.pool(tokens, padding_mask)
        if self.fc is None:
            return pooled
        out = self.fc(pooled)
        if self.for_inference and self.cfg.task == "classification":
            out = torch.softmax(out, dim=1)
        return out


def config_with(cfg: ParTConfig, **changes: object) -> ParTConfig:
    """A copy of ``cfg`` with some fields changed (configs are frozen)."""
    return dataclasses.replace(cfg, **changes)
