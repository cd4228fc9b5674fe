"""Fast ParT inference with identical outputs: each jet costs its own multiplicity, not the batch maximum.

Three tricks, each optional and tested for equivalence against the standard forward:

1. Length bucketing: jets are sorted by multiplicity and run in small groups, each trimmed to its own longest jet
   (weaver pads every jet to the batch maximum; real jets have 40-65 of up to 128 particles).
2. A folded pair embedding: the BatchNorms of weaver's PairEmbed are folded into its 1x1 convolutions, which become
   plain matrix products on the real (i <= j) pairs only, evaluated without the full L x L kinematics.
3. Optional bf16: a bf16 copy of the weights runs everything after the pair kinematics (which stay fp32). Plain
   autocast gains little on CPU because LayerNorm/GELU stay fp32 and every block pays casts in both directions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .bucketed import length_buckets, pack_real_first, real_pair_features, real_pairs

__all__ = ["FastInferenceConfig", "FastParT", "FoldedPairEmbed", "can_fold", "length_buckets", "pack_real_first"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class FastInferenceConfig:
    """Options of the fast inference path."""

    bucket_size: int = 32  # jets per length bucket; 0 = one bucket (trim to the batch maximum only)
    fold_pair_embed: bool = True
    dtype: Literal["fp32", "bf16"] = "fp32"


class FoldedPairEmbed(nn.Module):
    """weaver's PairEmbed (pp features) with every BatchNorm folded into the adjacent 1x1 convolution.

    Evaluates the interaction features only on the real pairs i <= j and scatters them symmetrically into a
    (B, H, L, L) bias, zero on padded pairs (as weaver's sparse evaluation).
    """

    def __init__(self, pair_embed: nn.Module) -> None:
        super().__init__()
        if not can_fold(pair_embed):
            raise ValueError("the folded pair embedding supports symmetric kinematic pair features only")
        self.pair_features = pair_embed.pairwise_lv_fts
        self.remove_self_pair = pair_embed.remove_self_pair
        self.layers = nn.ModuleList(_fold_conv_bn(pair_embed.embed))

    def forward(self, v: Tensor, mask: Tensor) -> Tensor:
        """v: (B, 4, L) four-vectors; mask: (B, 1, L) bool. Returns the additive bias (B, H, L, L)."""
        batch, _, length = v.shape
        pairs = real_pairs(mask.bool(), remove_self_pair=self.remove_self_pair)
        fts = real_pair_features(self.pair_features, v, pairs)  # (1, F, P)
        b, i, j = pairs.b, pairs.i, pairs.j
        h = fts.squeeze(0).T.to(self.layers[0].weight.dtype)  # (P, F): kinematics in fp32, then the model dtype
        for layer in self.layers:
            h = layer(h)  # (P, H) at the end
        flat = h.new_zeros(batch * length * length, h.size(1))  # (B*L*L, H): one row per ordered pair
        flat[(b * length + i) * length + j] = h
        flat[(b * length + j) * length + i] = h
        return flat.view(batch, length, length, -1).permute(0, 3, 1, 2).contiguous()


def can_fold(pair_embed: nn.Module | None) -> bool:
    """Folding needs symmetric kinematic pair features and no extra per-pair inputs."""
    return pair_embed is not None and pair_embed.is_symmetric and not pair_embed.pairwise_input_dim


def _fold_conv_bn(seq: nn.Sequential) -> list[nn.Module]:
    """Turn [BN?, (Conv1d, BN, act)*] into [Linear, act, ..., Linear] with identical eval-mode outputs."""
    out: list[nn.Module] = []
    pending_in: tuple[Tensor, Tensor] | None = None  # affine (scale, shift) applied to the next conv's input
    last_linear: nn.Linear | None = None
    for module in seq:
        if isinstance(module, nn.BatchNorm1d):
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            shift = module.bias - module.running_mean * scale
            if last_linear is None:
                pending_in = (scale, shift)
            else:  # fold into the preceding linear's outputs
                last_linear.weight.data.mul_(scale[:, None])
                last_linear.bias.data.mul_(scale).add_(shift)
        elif isinstance(module, nn.Conv1d):
            weight = module.weight.detach()[:, :, 0].clone()
            bias = module.bias.detach().clone() if module.bias is not None else weight.new_zeros(weight.size(0))
            if pending_in is not None:
                scale, shift = pending_in
                bias = bias + weight @ shift
                weight = weight * scale[None, :]
                pending_in = None
            last_linear = nn.Linear(weight.size(1), weight.size(0), device=weight.device, dtype=weight.dtype)
            last_linear.weight.data.copy_(weight)
            last_linear.bias.data.copy_(bias)
            out.append(last_linear)
        else:  # activation: later BatchNorms can no longer fold into this linear
            out.append(module)
            last_linear = None
    if pending_in is not None:
        raise ValueError("pair embedding ends with a BatchNorm that has no convolution to fold into")
    return out


class FastParT(nn.Module):
    """Inference engine sharing the weights of a ``ParticleTransformer``; same outputs, less padding work."""

    def __init__(self, model: nn.Module, cfg: FastInferenceConfig | None = None) -> None:
        super().__init__()
        if not model.supports_fast_inference:
            raise ValueError(f"the fast inference path does not support {type(model).__name__} with these options")
        self.cfg = cfg or FastInferenceConfig()
        self.dtype = torch.bfloat16 if self.cfg.dtype == "bf16" else torch.float32
        if self.dtype == torch.float32:
            self.model = model
        else:  # a low-precision copy; the unfolded pair embedding (fallback) stays fp32 for its log features
            self.model = copy.deepcopy(model).to(self.dtype)
            if self.model.pair_embed is not None:
                self.model.pair_embed.float()
        model = self.model
        pair_embed = model.pair_embed
        self.folded = FoldedPairEmbed(pair_embed) if self.cfg.fold_pair_embed and can_fold(pair_embed) else None

    def _group(self, x: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """The model's own encode/pool/head on one group already trimmed to its longest jet."""
        model = self.model
        if self.folded is not None:
            bias = self.folded(v, mask)
        else:
            bias = model.pair_bias(v, None, mask)
            bias = None if bias is None else bias.to(self.dtype)
        encoded = model.encode_trimmed(x.to(self.dtype), v, mask, bias)
        pooled = model.pool(encoded.tokens, encoded.padding_mask)
        return model.fc(pooled) if model.fc is not None else pooled

    @torch.inference_mode()
    def forward(self, x: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Same inputs and outputs as ``ParticleTransformer.forward`` in eval mode (softmax when for_inference)."""
        x, v, mask = pack_real_first(x, v, mask)
        lengths = mask.sum(dim=(1, 2))
        outputs: Tensor | None = None
        for idx in length_buckets(lengths, self.cfg.bucket_size):
            keep = int(lengths[idx].max().clamp(min=1))
            out = self._group(x[idx, :, :keep], v[idx, :, :keep], mask[idx, :, :keep]).float()
            if outputs is None:
                outputs = out.new_empty((x.size(0), *out.shape[1:]))
            outputs[idx] = out
        if self.model.for_inference and self.model.cfg.head.task == "classification" and self.model.fc is not None:
            outputs = torch.softmax(outputs, dim=1)
        return outputs
