"""Particle Transformer (ParT, arXiv:2202.03772) with pluggable attention, built from weaver-core's pieces.

Particle embedding, pair (interaction) embedding, sequence trimmer and weight initialisation are weaver-core's own;
the blocks are ours (``blocks.py``) and each block's attention core comes from the attention-kind registry
(``attention_kinds.py``: softmax, differential, DSA top-k, DSA indexer). Module and parameter names match
weaver-core's ``ParticleTransformer`` so a state_dict of it loads unchanged and gives the same outputs. Read top to
bottom: ``__init__`` builds, ``forward`` -> ``encode`` (trim, embed pairs) -> ``encode_trimmed`` (embed particles,
``run_blocks``, latents) -> ``pool`` -> head.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

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

from .attention import DenseCore, MultiheadAttention
from .attention_kinds import build_core
from .backends import merge_bias_and_mask
from .blocks import Block, BlockConfig, attention_options
from .bucketed import bucketed_outputs, can_bucket_pairs, real_pair_bias
from .config import config_with
from .context import ForwardContext, ValueResidual
from .dropout import Dropout
from .dsa.attention import selected_pair_bias
from .dsa.indexer import LightningIndexer
from .dsa.schedule import kept_fraction
from .dsa.statistics import AuxChannel, merge_layer_records, summarize_records
from .latent import LatentCrossAttention, LatentSelfAttention
from .norms import make_norm
from .part_config import ParTConfig
from .positional import PositionalEncoding, local_attention_mask

__all__ = ["COMPILE_TRAINING_ERROR", "MASKED_VECTOR", "Encoded", "ParTConfig", "ParticleTransformer", "block_config",
           "config_with", "masked_vector_like"]

Tensor = torch.Tensor

# four-vector (px, py, pz, E) given to padded or masked particles where pair features are computed anyway: not zero,
# because atan2(0, 0) in the pair features is NaN once exported to ONNX
MASKED_VECTOR = (1.0, 0.0, 0.0, 1.0)


# weaver --compile wraps training in torch.compile; on CPU with torch 2.13 inductor's compiled backward fails for ParT
# (weaver-core's own too) once lengths vary, and compiled steps ran 8-60x slower than eager (docs/benchmarks.md);
# weaver_hooks' train function refuses it with this line
COMPILE_TRAINING_ERROR = (
    "weaver --compile: ParT training cannot be compiled on CPU with torch 2.13 (inductor's backward fails once the "
    "jet length varies: 'expected size ... stride ...'); train without --compile, the bucketed path is the fast one")


def masked_vector_like(v: Tensor) -> Tensor:
    """``MASKED_VECTOR`` as a (1, 4, 1) tensor with v's dtype and device, to fill (B, 4, P) four-vectors."""
    return torch.tensor(MASKED_VECTOR, dtype=v.dtype, device=v.device).view(1, 4, 1)


def block_config(cfg: ParTConfig, *, cls_block: bool = False) -> BlockConfig:
    """Particle blocks use the configured dropouts; class-attention blocks use none (as in ParT)."""
    options = cfg.blocks
    if cls_block:
        options = dataclasses.replace(options, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)
    return BlockConfig(options=options, embed_dim=cfg.embed_dim, attn_backend=cfg.attn.attn_backend or "sdpa")


@dataclass
class Encoded:
    """What ``encode`` returns: the tokens to pool, their padding mask, and the particle tokens before any latent
    encoder (the track model's pointer head reads them)."""

    tokens: Tensor  # (B, L, E)
    padding_mask: Tensor  # (B, L) bool, True for padding
    particle_tokens: Tensor  # (B, N, E)


class ParticleTransformer(nn.Module):
    """ParT: particle embedding + pair-bias transformer blocks + class-attention blocks + MLP head."""

    def __init__(self, cfg: ParTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.for_inference = cfg.inference.for_inference
        emb, blocks = cfg.embedding, cfg.blocks
        self.embed = Embed(emb.input_dim, emb.embed_dims, activation=emb.activation) if emb.embed_dims \
            else nn.Identity()
        self.pair_embed = self._make_pair_embed(cfg)
        self.blocks = nn.ModuleList(self.make_block(i) for i in range(blocks.num_layers))
        self.cls_blocks = (
            nn.ModuleList(self.make_block(i, cls_block=True) for i in range(blocks.num_cls_layers))
            if blocks.num_cls_layers > 0 and cfg.head.head == "class_attention"
            else None
        )
        self._make_refinements(cfg)
        self.norm = make_norm(cfg.blocks.norm, cfg.embed_dim)
        self.fc = self._make_head(cfg) if cfg.head.num_classes is not None else None
        # the class token of the class-attention blocks, or the global token (ParT v3.6) of the particle blocks
        uses_token = self.cls_blocks is not None or cfg.head.global_token
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if uses_token else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.trimmer = SequenceTrimmer(enabled=cfg.inference.trim and not self.for_inference,
                                       round_to_32=cfg.inference.compile_model)
        if blocks.weight_init is not None:
            named_apply(init_weights_vit_moco if blocks.weight_init == "moco" else init_weights_vit_timm, self)
            for module in self.modules():  # the DSA indexer's priors start where their docs say, not at random
                if isinstance(module, LightningIndexer):
                    module.init_priors()
        if blocks.fix_init:
            for layer_id, block in enumerate(self.blocks, start=1):
                block.attn.out_proj.weight.data.div_(math.sqrt(2.0 * layer_id))
                block.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))
        self.aux_channel = AuxChannel()  # auxiliary loss and statistics of sparse layers (bound by AuxLoss)
        if cfg.sparse_layers:
            # persistent: saved in weaver's checkpoints, so --load-epoch resumes the schedule where it stopped
            self.register_buffer("dsa_step", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _make_pair_embed(cfg: ParTConfig) -> PairEmbed | None:
        emb = cfg.embedding
        pair_dim, extra = emb.resolved_pair_input_dim, emb.resolved_pair_extra_dim
        if emb.pair_embed_dims is None or pair_dim + extra == 0 or cfg.blocks.num_layers == 0:
            return None
        return PairEmbed(pair_dim, extra, (*emb.pair_embed_dims, cfg.blocks.num_heads),
                         pairwise_lv_type=emb.pair_input_type, remove_self_pair=emb.remove_self_pair,
                         use_pre_activation_pair=emb.use_pre_activation_pair, use_bias=cfg.blocks.bias,
                         for_onnx=cfg.inference.for_inference,
                         sparse_eval=(False, True) if cfg.inference.compile_model else (True, True))

    def make_block(self, index: int, *, cls_block: bool = False) -> Block:
        """One particle block (or class-attention block) with the attention core its kind builds."""
        cfg = self.cfg
        bc = block_config(cfg, cls_block=cls_block)
        core = build_core(cfg, layer=index, cls_block=cls_block)
        attention = MultiheadAttention(bc.embed_dim, bc.options.num_heads, core=core, **attention_options(bc.options))
        block = Block(bc, attention=attention)
        if cfg.refine.value_residual and not cls_block and index > 0:
            block.attn.enable_value_residual()
        return block

    def _make_refinements(self, cfg: ParTConfig) -> None:
        """Optional modules: positional encoding, register tokens, latent encoder and latent decoder head."""
        refine = cfg.refine
        self.pos_encoding = None if refine.pos_encoding == "none" else PositionalEncoding(
            refine.pos_encoding, cfg.embed_dim, fourier_features=refine.pos_fourier_features,
            fourier_scale=refine.pos_fourier_scale)
        self.registers = nn.Parameter(torch.zeros(1, refine.num_registers, cfg.embed_dim)) \
            if refine.num_registers else None
        if self.registers is not None:
            nn.init.trunc_normal_(self.registers, std=0.02)
        self.latent_encoder = self.latent_blocks = None
        if refine.latent_tokens > 0:
            self.latent_encoder = LatentCrossAttention(block_config(cfg), num_tokens=refine.latent_tokens)
            self.latent_blocks = LatentSelfAttention(block_config(cfg), num_layers=refine.latent_layers)
        self.latent_head = None
        if cfg.head.head == "latent":
            self.latent_head = LatentCrossAttention(block_config(cfg, cls_block=True), num_tokens=cfg.head.head_queries,
                                                    num_layers=cfg.blocks.num_cls_layers)

    @staticmethod
    def _make_head(cfg: ParTConfig) -> nn.Sequential:
        layers: list[nn.Module] = []
        in_dim = cfg.embed_dim
        for out_dim, drop_rate in cfg.head.fc_params:
            layers.append(nn.Sequential(nn.Linear(in_dim, out_dim, bias=cfg.blocks.bias), nn.ReLU(),
                                        Dropout(drop_rate)))
            in_dim = out_dim
        layers.append(nn.Linear(in_dim, cfg.head.num_classes))
        return nn.Sequential(*layers)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    # ---- the sparse-attention schedule -------------------------------------------------------------------------

    def current_kept_fraction(self) -> float:
        """The DSA schedule's kept fraction at the stored training step (1.0 without sparse layers)."""
        return kept_fraction(self.cfg.sparsity, int(self.dsa_step)) if self.cfg.sparse_layers else 1.0

    def pop_aux_loss(self) -> Tensor | None:
        """The weighted auxiliary loss of the last training forward (then cleared so it is added once)."""
        return self.aux_channel.pop_loss()

    def new_context(self) -> ForwardContext:
        """The context of one forward: the schedule's kept fraction, whether to record, the value-residual state."""
        sparse = bool(self.cfg.sparse_layers)
        return ForwardContext(ratio=self.current_kept_fraction(), topk=self.cfg.sparsity.topk,
                              collect=sparse and self.training and torch.is_grad_enabled(),
                              value_residual=ValueResidual() if self.cfg.refine.value_residual else None)

    def _uses_selected_pairs(self) -> bool:
        """Indexer kind on every block: pairs are embedded per selected (i, j), no dense pair bias is built (unless
        the indexer's pair prior reads it)."""
        cfg = self.cfg
        return cfg.attn.kind == "dsa_indexer" and len(cfg.sparse_layers) == cfg.blocks.num_layers \
            and self.pair_embed is not None and cfg.sparsity.indexer_prior != "pair"

    # ---- forward --------------------------------------------------------------------------------------------------

    def encode(self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None, uu: Tensor | None = None,
               uu_idx: Tensor | None = None, *, ctx: ForwardContext | None = None) -> Encoded:
        """Trim padding, embed particles and pairs and run the blocks (``ctx``: a fresh context when None)."""
        ctx = self.new_context() if ctx is None else ctx
        x, v, mask, uu = self.trim_inputs(x, v, mask, uu, uu_idx)
        bias = None if self._uses_selected_pairs() else self.pair_bias(v, uu, mask)
        encoded = self.encode_trimmed(x, v, mask, bias, ctx=ctx)
        self.publish(ctx)
        return encoded

    def trim_inputs(self, x: Tensor, v: Tensor | None, mask: Tensor | None, uu: Tensor | None,
                    uu_idx: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """The start of every forward: advance the DSA schedule, densify sparse pair inputs, trim with weaver's
        SequenceTrimmer (random in training, as weaver-core's ParT)."""
        if self.cfg.attn.kind == "dsa_indexer" and (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            raise RuntimeError("DSA dsa_mode='indexer' cannot be exported (data-dependent k); export with 'topk'")
        if self.cfg.sparse_layers and self.training:
            self.dsa_step.add_(1)
        with torch.no_grad():
            if uu_idx is not None and not self.for_inference:
                uu = build_sparse_tensor(uu, uu_idx, x.size(-1))
            return self.trimmer(x, v, mask, uu)

    def pair_bias(self, v: Tensor | None, uu: Tensor | None, mask: Tensor) -> Tensor | None:
        """The dense pair-interaction bias (B, H, L, L), or None without pair inputs."""
        if (v is None and uu is None) or self.pair_embed is None:
            return None
        if not mask.any():  # only empty jets: no pair to embed (weaver's sparse PairEmbed fails on zero pairs)
            ref = v if v is not None else uu
            return ref.new_zeros(mask.size(0), self.pair_embed.out_dim, mask.size(-1), mask.size(-1))
        if v is not None and self.for_inference:
            # the dense (export) path embeds padded pairs too: zero padding would give atan2(0, 0), NaN in ONNX
            v = torch.where(mask.bool(), v, masked_vector_like(v))
        if self.pair_embed.training and uu is None and can_bucket_pairs(self.pair_embed) \
                and getattr(self.pair_embed, "sparse_eval", (False, False))[0]:
            return real_pair_bias(self.pair_embed, v, mask)  # weaver's sparse training path, as matrix products
        return self.pair_embed(v, uu=uu, mask=mask)

    def encode_trimmed(self, x: Tensor, v: Tensor | None, mask: Tensor, bias: Tensor | None, *,
                       ctx: ForwardContext | None = None, normalized_inputs: bool = False) -> Encoded:
        """Everything after trimming and the pair embedding (shared with the fast and the bucketed paths, which
        may have applied the embedding's input BatchNorm already: ``normalized_inputs``)."""
        ctx = self.new_context() if ctx is None else ctx
        mask = mask.bool()
        padding_mask = ~mask.squeeze(1)
        if normalized_inputs:  # weaver's Embed.forward after its input_bn
            x = self.embed.embed(self.embed.conv_embed(x).transpose(1, 2).contiguous())
        else:
            x = self.embed(x)
        x = x.masked_fill(~mask.transpose(1, 2), 0)
        if self.pos_encoding is not None:
            self._need_vectors(v, "pos_encoding")
            x = x + self.pos_encoding(v, mask).to(x.dtype)
        if self.cfg.attn.kind == "dsa_indexer" and v is not None and self.pair_embed is not None:
            pair_embed = self.pair_embed
            ctx.pair_fn = lambda idx, valid, start: selected_pair_bias(pair_embed, v, mask, idx, valid, start)
        if self.cfg.attn.kind == "dsa_indexer" and self.cfg.sparsity.indexer_prior == "angle" and v is not None:
            ctx.directions = F.normalize(v[:, :3].transpose(1, 2).float(), dim=-1)  # momenta or hit positions
        if self.cfg.head.global_token:  # ParT v3.6: first in the sequence, never masked, zero pair bias
            x = torch.cat((self.cls_token.expand(x.size(0), -1, -1).to(x.dtype), x), dim=1)
            padding_mask = F.pad(padding_mask, (1, 0), value=False)
            bias = None if bias is None else F.pad(bias, (1, 0, 1, 0))
        particles = x = self.run_blocks(x, v, mask, padding_mask, bias, ctx=ctx)
        if self.latent_encoder is not None:
            x = self.latent_blocks(self.latent_encoder(x, padding_mask))
            padding_mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        if self.cfg.head.global_token:
            particles = particles[:, 1:]
        return Encoded(tokens=x, padding_mask=padding_mask, particle_tokens=particles)

    @staticmethod
    def _need_vectors(v: Tensor | None, option: str) -> None:
        if v is None:
            raise ValueError(f"ParT option {option} needs the particle four-vectors (pf_vectors)")

    def run_blocks(self, x: Tensor, v: Tensor | None, mask: Tensor, padding_mask: Tensor, bias: Tensor | None, *,
                   ctx: ForwardContext) -> Tensor:
        """The particle blocks, with registers, local masks, value residual and checkpointing when configured."""
        refine = self.cfg.refine
        local = None
        if refine.attn_window or refine.attn_knn:
            self._need_vectors(v, "attn_window/attn_knn")
            local = local_attention_mask(v, mask, window=refine.attn_window, knn=refine.attn_knn)
        num_particles = x.size(1)
        if self.registers is not None:
            extra = refine.num_registers
            x = torch.cat((x, self.registers.expand(x.size(0), -1, -1).to(x.dtype)), dim=1)
            padding_mask = F.pad(padding_mask, (0, extra), value=False)
            bias = None if bias is None else F.pad(bias, (0, extra, 0, extra))
            local = None if local is None else F.pad(local, (0, extra, 0, extra))
        if local is not None:
            local = local.to(x.dtype).expand(-1, self.cfg.blocks.num_heads, -1, -1)
            bias = local if bias is None else bias + local
        if bias is not None and self._blocks_take_a_merged_mask(ctx):  # once here instead of once per block
            empty = padding_mask.all(-1)  # jets without particles: left unmasked, or softmax would give NaN
            bias = merge_bias_and_mask(bias, padding_mask.masked_fill(empty[:, None], False), bias.dtype)
            padding_mask = None
        use_checkpoint = self.cfg.blocks.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_checkpoint:
                x = checkpoint(block, x, padding_mask=padding_mask, bias=bias, ctx=ctx, use_reentrant=False)
            else:
                x = block(x, padding_mask=padding_mask, bias=bias, ctx=ctx)
        return x[:, :num_particles]

    def _blocks_take_a_merged_mask(self, ctx: ForwardContext) -> bool:
        """Dense cores through sdpa, bmm or math add the padding to the pair bias in every block: in training and in
        the fast inference path (``ctx.merged_padding``), merge it once (the standard eval forward keeps the mask
        separate for the profiler's hooks, which read real queries from it)."""
        mergeable = ("sdpa", "bmm", "math")
        dense = all(isinstance(b.attn.core, DenseCore) and (ctx.backend or b.attn.core.backend) in mergeable
                    for b in self.blocks)
        return dense and (ctx.merged_padding or (self.training and torch.is_grad_enabled()))

    def publish(self, ctx: ForwardContext) -> None:
        """Hand a training forward's auxiliary loss and statistics to the aux channel (nothing pending otherwise);
        the records of a layer's length buckets are merged first, weighted by their real queries."""
        if not ctx.collect:
            self.aux_channel.clear()
            return
        records = merge_layer_records(ctx.records)
        loss, terms = summarize_records(records, self.cfg.sparsity.loss_weights)
        self.aux_channel.publish(loss, terms, records)

    def pool(self, x: Tensor, padding_mask: Tensor, *, backend: str | None = None) -> Tensor:
        """Class attention (by ``backend`` if given, else the blocks' own), the global token or a masked mean; norm."""
        if self.cfg.head.global_token:
            pooled = x[:, 0]
        elif self.latent_head is not None:
            pooled = self.latent_head(x, padding_mask).mean(dim=1)
        elif self.cls_blocks is not None:
            token = self.cls_token.expand(x.size(0), -1, -1)
            ctx = None if backend is None else ForwardContext(backend=backend)
            for block in self.cls_blocks:
                token = block(x, x_cls=token, padding_mask=padding_mask, ctx=ctx)
            pooled = token.squeeze(1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
            pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return self.norm(pooled)

    @property
    def supports_fast_inference(self) -> bool:
        """Whether ``FastParT`` reproduces this model (sparse attention selects per jet length: no)."""
        return not self.cfg.sparse_layers

    def use_bucketed_training(self, x: Tensor, uu: Tensor | None, uu_idx: Tensor | None) -> bool:
        """Training forwards run per length bucket (``bucketed.py``): by default on CPU; on a GPU only with
        ``training_path='bucketed'`` (measured 2.5-4x slower than padding on an H200, docs/benchmarks.md). Pair
        inputs beyond the four-vectors, and the DSA indexer (its pair BatchNorms normalise over the pairs it selected
        in the whole batch), keep the padded path."""
        path = self.cfg.inference.training_path
        if path == "auto":
            path = "bucketed" if x.device.type == "cpu" else "padded"
        if not self.training or path != "bucketed" or uu is not None or uu_idx is not None:
            return False
        return can_bucket_pairs(self.pair_embed) and self.cfg.attn.kind != "dsa_indexer"

    def head(self, pooled: Tensor) -> Tensor:
        """The MLP head (identity without one), then the softmax of weaver's exported classifiers."""
        if self.fc is None:
            return pooled
        out = self.fc(pooled)
        if self.for_inference and self.cfg.head.task == "classification":
            out = torch.softmax(out, dim=1)
        return out

    def forward(self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None, uu: Tensor | None = None,
                uu_idx: Tensor | None = None) -> Tensor:
        """x: (B, C, L) features; v: (B, 4, L) (px, py, pz, E); mask: (B, 1, L), 1 for real particles."""
        if mask is None:
            mask = torch.ones_like(x[:, :1])
        if self.cfg.inference.inference_path == "bucketed" and not self.training:
            from .fast_inference import fast_inference_forward

            out = fast_inference_forward(self, x, v, mask, uu, uu_idx)
            if out is not None:
                return out
        if self.use_bucketed_training(x, uu, uu_idx):
            ctx = self.new_context()
            x, v, mask, _ = self.trim_inputs(x, v, mask, None, None)
            out = bucketed_outputs(self, x, v, mask, bucket_size=self.cfg.inference.bucket_size, ctx=ctx)
            self.publish(ctx)
            return out
        encoded = self.encode(x, v, mask, uu, uu_idx)
        return self.head(self.pool(encoded.tokens, encoded.padding_mask))
