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

__all__ = ["FastInferenceConfig", "FastParT", "FoldedLinear", "FoldedPairEmbed", "can_fold", "fast_inference_forward",
           "length_buckets", "pack_real_first"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class FastInferenceConfig:
    """Options of the fast inference path."""

    bucket_size: int = 32  # about this many jets per length bucket (bucketed.length_buckets); 0 = one bucket
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


class FoldedLinear(nn.Linear):
    """An ``nn.Linear`` holding given (folded) weights: no random initialisation, so building one while
    ``torch.onnx.export`` traces adds no random op to the graph (the folding arithmetic is constant-folded)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        nn.Module.__init__(self)
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)


def _fold_conv_bn(seq: nn.Sequential) -> list[nn.Module]:
    """Turn [BN?, (Conv1d, BN, act)*] into [Linear, act, ..., Linear] with identical eval-mode outputs.

    Pure functions of the parameters (no in-place updates), so that under ONNX tracing the folding is constant-folded
    into the exported weights."""
    out: list[nn.Module] = []
    pending_in: tuple[Tensor, Tensor] | None = None  # affine (scale, shift) applied to the next conv's input
    linear: tuple[Tensor, Tensor] | None = None  # (weight, bias) of the linear being folded

    def close_linear() -> None:
        nonlocal linear
        if linear is not None:
            out.append(FoldedLinear(*linear))
            linear = None

    for module in seq:
        if isinstance(module, nn.BatchNorm1d):
            scale = module.weight.detach() / torch.sqrt(module.running_var + module.eps)
            shift = module.bias.detach() - module.running_mean * scale
            if linear is None:
                pending_in = (scale, shift)
            else:  # fold into the preceding linear's outputs
                linear = (linear[0] * scale[:, None], linear[1] * scale + shift)
        elif isinstance(module, nn.Conv1d):
            close_linear()
            weight = module.weight.detach()[:, :, 0]
            bias = module.bias.detach() if module.bias is not None else weight.new_zeros(weight.size(0))
            if pending_in is not None:
                scale, shift = pending_in
                bias = bias + weight @ shift
                weight = weight * scale[None, :]
                pending_in = None
            linear = (weight.clone(), bias.clone())
        else:  # activation: later BatchNorms can no longer fold into this linear
            close_linear()
            out.append(module)
    close_linear()
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

    def forward_group(self, x: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """One group of jets the caller has already bucketed: real particles first, trimmed to its longest jet.

        The graph ``weaver --export-onnx`` writes with ``-o inference_path 'bucketed'``: the folded pair embedding on
        the real i <= j pairs, then the blocks at the group's own length. Without autograd state or Python-side
        branching on data, so the TorchScript exporter traces it with dynamic batch and length axes."""
        out = self._group(x, v, mask).float()
        if self.model.for_inference and self.model.cfg.head.task == "classification" and self.model.fc is not None:
            out = torch.softmax(out, dim=1)
        return out

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


def fast_inference_forward(model: nn.Module, x: Tensor, v: Tensor | None, mask: Tensor, uu: Tensor | None,
                           uu_idx: Tensor | None) -> Tensor | None:
    """``inference_path='bucketed'`` in eval: the fast path's outputs, or None where the standard forward runs.

    - Under ONNX export (tracing): the graph of one caller-made bucket (``FastParT.forward_group``, docs/onnx.md).
    - Eagerly without gradients: length buckets, folded pair embedding, optional bf16 (``FastParT``).
    - With gradients, or with extra pair inputs (``uu``): None.
    """
    supported = model.supports_fast_inference  # without a foldable pair embedding, the dense one is used
    unsupported = (f"inference_path='bucketed' is not supported by {type(model).__name__} with these options (sparse "
                   "attention; extra pair inputs under export): use the default path")
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        if not supported or uu is not None or uu_idx is not None:
            raise ValueError(unsupported)
        return FastParT(model).forward_group(x, v, mask.bool())
    if torch.is_grad_enabled() or uu is not None or uu_idx is not None:
        return None
    if not supported:
        raise ValueError(unsupported)
    # built per call on purpose: folding a few small matrices costs microseconds and can never go stale after
    # load_state_dict (the bf16 option also copies the weights per call: ~10 ms per batch)
    inference = model.cfg.inference
    return FastParT(model, FastInferenceConfig(bucket_size=inference.bucket_size, dtype=inference.inference_dtype))(
        x, v, mask)
