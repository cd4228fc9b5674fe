"""Fast ParT inference with identical outputs: each jet costs its own multiplicity, not the batch maximum.

Three tricks, each optional and tested for equivalence against the standard forward:

1. Length bucketing: jets are sorted by multiplicity and run in small groups, each trimmed to its own longest jet
   (weaver pads every jet to the batch maximum; real jets have 40-65 of up to 128 particles).
2. A folded pair embedding: the BatchNorms of weaver's PairEmbed are folded into its 1x1 convolutions, which become
   plain matrix products on the real (i <= j) pairs only, evaluated without the full L x L kinematics.
3. Optional bf16. Eagerly, a bf16 copy of the weights runs everything after the pair kinematics (which stay fp32):
   plain autocast gains little there, as every block pays casts in both directions. Compiled, autocast: the matrix
   products run in bf16 while the residual stream, norms and softmax stay fp32; inductor fuses the activation casts
   into its kernels and freezing folds the weight casts. That is both faster and closer to fp32 than the bf16 copy.
4. On CPU, attention by explicit batched matmuls (the ``bmm`` backend, fp32 softmax) with the padding added to the
   pair bias once per group: torch's fused SDPA kernel is 2-3x slower at ParT's sizes (head dim 16, short jets).
5. Optional ``torch.compile`` (inductor with frozen weights, dynamic shapes) of the pair MLP and of everything after
   it: prepacked oneDNN matmuls with fused GELUs, fused LayerNorms and residuals. Compiling takes ~30 s per graph, so
   compiled engines are cached per model and rebuilt when its weights change (``engine_for``). oneDNN builds one
   kernel per matrix shape and keeps 1024 of them, so a compiled engine runs few shapes (``CompiledShapes``):
   groups of equal jet counts, lengths rounded up to a multiple of 8 and pair rows to a multiple of 4096. With a
   new shape in every group, kernel creation made the compiled path 1.6x slower (docs/benchmarks.md).
6. The packed layout (``packed.py``; compiled fp32 engines by default): chunks of 128 jets, each one token matrix of
   groups at their exact lengths, so the token-wise layers run on few padded rows; attention runs per jet by the
   ``grouped`` backend (``grouped.py``), a fused C++ kernel (``native.py``) that never builds the (jets, H, L, L)
   bias. 1.3x the groups above in fp32, at 53-55% of this CPU's fp32 peak (docs/benchmarks.md, session 10).
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from .backends import get_backend
from .bucketed import length_buckets, pack_real_first, real_pair_features, real_pairs
from .context import ForwardContext
from .native import grouped_attention_library
from .packed import BMM_SHAPES, PackedShapes, pack_batch, packed_outputs, packed_supported, pair_terms

__all__ = ["CompiledShapes", "FastInferenceConfig", "FastParT", "FoldedLinear", "FoldedPairEmbed", "can_fold",
           "compile_frozen", "engine_for", "fast_inference_forward", "group_indices", "group_length", "length_buckets",
           "pack_real_first"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class CompiledShapes:
    """How a compiled engine rounds its matrix shapes, so that oneDNN's kernel cache (1024 kernels) keeps them all."""

    length_multiple: int = 8  # group length rounded up (padded slots are masked, as any padding)
    pair_row_multiple: int = 4096  # rows of the pair MLP rounded up with dummy pairs, dropped after it
    equal_groups: bool = True  # groups of exactly bucket_size jets (by multiplicity) instead of fewest-padding ones


@dataclass(frozen=True)
class FastInferenceConfig:
    """Options of the fast inference path."""

    bucket_size: int = 32  # about this many jets per length bucket (bucketed.length_buckets); 0 = one bucket
    fold_pair_embed: bool = True
    dtype: Literal["fp32", "bf16"] = "fp32"
    attention_backend: str | None = None  # None: 'bmm' on CPU, the model's own backends on CUDA
    compile: bool = False  # torch.compile with frozen weights: only where the weights no longer change
    layout: Literal["auto", "groups", "packed"] = "auto"  # auto: packed when compiled in fp32 and supported


class FoldedPairEmbed(nn.Module):
    """weaver's PairEmbed (pp features) with every BatchNorm folded into the adjacent 1x1 convolution.

    Evaluates the interaction features only on the real pairs i <= j and scatters them symmetrically into a
    (B, H, L, L) bias, zero on padded pairs (as weaver's sparse evaluation).
    """

    def __init__(self, pair_embed: nn.Module, *, row_multiple: int = 1) -> None:
        """``row_multiple``: pad the pair rows to a multiple of it (a few matrix shapes for compiled kernels)."""
        super().__init__()
        self.row_multiple = row_multiple
        if not can_fold(pair_embed):
            raise ValueError("the folded pair embedding supports symmetric kinematic pair features only")
        self.pair_features = pair_embed.pairwise_lv_fts
        self.remove_self_pair = pair_embed.remove_self_pair
        self.layers = nn.ModuleList(_fold_conv_bn(pair_embed.embed))

    def forward(self, v: Tensor, mask: Tensor) -> Tensor:
        """v: (B, 4, L) four-vectors; mask: (B, 1, L) bool. Returns the additive bias (B, H, L, L)."""
        pairs = real_pairs(mask.bool(), remove_self_pair=self.remove_self_pair)
        fts = real_pair_features(self.pair_features, v, pairs)  # (1, F, P)
        batch, _, length = v.shape
        flat_ij = (pairs.b * length + pairs.i) * length + pairs.j
        flat_ji = (pairs.b * length + pairs.j) * length + pairs.i
        fts = fts.squeeze(0).T  # (P, F)
        extra = -fts.size(0) % self.row_multiple
        if extra:  # dummy pairs: zero features, scattered to the spare row past the end
            fts = torch.cat((fts, fts.new_zeros(extra, fts.size(1))))
            spare = flat_ij.new_full((extra,), batch * length * length)
            flat_ij, flat_ji = torch.cat((flat_ij, spare)), torch.cat((flat_ji, spare))
        return self.embed(fts, flat_ij, flat_ji, batch, length)

    def mlp(self, fts: Tensor) -> Tensor:
        """The folded MLP on pair features (P, F) -> (P, H)."""
        h = fts.to(self.layers[0].weight.dtype)  # kinematics in fp32, then the model dtype
        for layer in self.layers:
            h = layer(h)
        return h

    def embed(self, fts: Tensor, flat_ij: Tensor, flat_ji: Tensor, batch: int, length: int) -> Tensor:
        """The MLP on the pair features (P, F) and the symmetric scatter to ordered pairs (flat indices into
        batch * length * length; index batch * length * length is a spare row for dummy pairs). Free of
        data-dependent shapes, so it compiles."""
        h = self.mlp(fts)
        flat = h.new_zeros(batch * length * length + 1, h.size(1))  # one row per ordered pair, plus the spare
        flat[flat_ij] = h
        flat[flat_ji] = h
        return flat[:-1].view(batch, length, length, -1).permute(0, 3, 1, 2).contiguous()


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
        self.autocast = self.cfg.dtype == "bf16" and self.cfg.compile  # bf16 products, fp32 residuals (module doc)
        self.dtype = torch.bfloat16 if self.cfg.dtype == "bf16" and not self.autocast else torch.float32  # weights
        if self.dtype == torch.float32:
            self.model = model
        else:  # a low-precision copy; the unfolded pair embedding (fallback) stays fp32 for its log features
            self.model = copy.deepcopy(model).to(self.dtype)
            if self.model.pair_embed is not None:
                self.model.pair_embed.float()
        model = self.model
        pair_embed = model.pair_embed
        self.shapes = CompiledShapes() if self.cfg.compile else None
        rows = self.shapes.pair_row_multiple if self.shapes else 1
        foldable = self.cfg.fold_pair_embed and can_fold(pair_embed)
        self.folded = FoldedPairEmbed(pair_embed, row_multiple=rows) if foldable else None
        if self.cfg.attention_backend is not None:
            get_backend(self.cfg.attention_backend)
        wants_packed = self.cfg.layout == "packed" or (self.cfg.layout == "auto" and self.cfg.compile)
        on_cpu = next(model.parameters()).device.type == "cpu"  # the kernel is a CPU one
        fused = (wants_packed and on_cpu and self.dtype == torch.float32 and not self.autocast
                 and grouped_attention_library() is not None)  # builds the kernel once per machine (native.py)
        self.packed = self._use_packed(model, fused=fused)
        self.packed_shapes = PackedShapes() if fused else BMM_SHAPES
        self._tail, self._packed_tail = self._tail_eager, self._packed_tail_eager
        self._pair_mlp = self.folded.mlp if self.folded is not None else None
        if self.cfg.compile:
            # compiled code of this model's earlier weights must go: in-place updates keep the module's identity,
            # which is all dynamo's guards check (compile_frozen). Other engines recompile on their next call.
            torch.compiler.reset()
            if self.packed:
                self._packed_tail = compile_frozen(self._packed_tail_eager)
                self._pair_mlp = compile_frozen(self.folded.mlp) if self.folded is not None else None
            else:
                self._tail = compile_frozen(self._tail_eager)
                if self.folded is not None:
                    self.folded.embed = compile_frozen(self.folded.embed)

    def _use_packed(self, model: nn.Module, *, fused: bool) -> bool:
        """The packed layout: asked for, or by default when compiled in fp32 with the fused attention kernel
        (``fused``); where the model allows it."""
        layout = self.cfg.layout
        supported = packed_supported(model) and (self.folded is not None or model.pair_embed is None)
        if layout == "packed" and not supported:
            raise ValueError("FastInferenceConfig(layout='packed') needs dense attention, class-attention pooling "
                             "and a foldable pair embedding (no registers, latents or positional encodings)")
        # auto: compiled fp32 with the kernel; without it (bmm per group) bf16 ran slower packed than grouped
        auto = self.cfg.compile and fused
        return supported and (layout == "packed" or (layout == "auto" and auto))

    def _context(self, device: torch.device) -> ForwardContext:
        """This forward's context: the attention backend (``bmm`` on CPU by default) and the padding merged into the
        pair bias once. Under ONNX export the graph keeps the model's own backends (bmm's empty-jet check is
        data-dependent)."""
        ctx = self.model.new_context()
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return ctx
        backend = self.cfg.attention_backend or ("bmm" if device.type == "cpu" else None)
        return replace(ctx, backend=backend, merged_padding=True)

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
        if self.folded is not None:
            bias = self.folded(v, mask)  # fp32 also under autocast: a bf16 pair MLP moved softmaxes by 0.06 (trained)
        else:
            bias = self.model.pair_bias(v, None, mask)
            bias = None if bias is None else bias.to(self.dtype)
        return self._tail(x.to(self.dtype), v, mask, bias)

    def _tail_eager(self, x: Tensor, v: Tensor, mask: Tensor, bias: Tensor | None) -> Tensor:
        """Everything after the pair embedding: blocks, pooling, head (what ``compile`` compiles)."""
        model = self.model
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            ctx = self._context(x.device)
            encoded = model.encode_trimmed(x, v, mask, bias, ctx=ctx)
            pooled = model.pool(encoded.tokens, encoded.padding_mask, backend=ctx.backend)
            return model.fc(pooled) if model.fc is not None else pooled

    def _packed_tail_eager(self, features: Tensor, mask: Tensor, pair_terms: Tensor, jets: Tensor,
                           groups: Tensor) -> Tensor:
        """The packed layout's blocks, pooling and head (what ``compile`` compiles there)."""
        self_pairs = self.folded is None or not self.folded.remove_self_pair
        with torch.autocast(features.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return packed_outputs(self.model, features, mask, pair_terms, jets, groups, self_pairs=self_pairs)

    def _packed_chunk(self, x: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """The head's outputs for a chunk of jets through the packed layout (packed.py)."""
        shapes = self.packed_shapes
        remove_self_pair = self.folded.remove_self_pair if self.folded is not None else False
        batch = pack_batch(x, v, mask, bucket_size=shapes.group_jets, row_multiple=shapes.row_multiple,
                           remove_self_pair=remove_self_pair)
        heads = self.model.blocks[0].num_heads
        terms = x.new_zeros(0, heads) if self.folded is None or not len(batch.pairs.b) else \
            pair_terms(batch, self.folded.pair_features, self._pair_mlp, chunk_rows=shapes.pair_chunk_rows)
        out = self._packed_tail(batch.features.to(self.dtype), batch.mask, terms, batch.jets, batch.groups).float()
        return out[torch.argsort(batch.order)]

    @torch.inference_mode()
    def forward(self, x: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Same inputs and outputs as ``ParticleTransformer.forward`` in eval mode (softmax when for_inference)."""
        x, v, mask = pack_real_first(x, v, mask)
        lengths = mask.sum(dim=(1, 2))
        if self.packed:  # chunks of jets by multiplicity, each one token matrix
            parts, run = lengths.argsort(stable=True).split(self.packed_shapes.chunk_jets), self._packed_chunk
        else:  # groups, each run as its own batch
            parts, run = group_indices(lengths, self.cfg.bucket_size, self.shapes), self._group
        outputs: Tensor | None = None
        for idx in parts:
            keep = group_length(int(lengths[idx].max().clamp(min=1)), x.size(-1), self.shapes)
            out = run(x[idx, :, :keep], v[idx, :, :keep], mask[idx, :, :keep]).float()
            if outputs is None:
                outputs = out.new_empty((x.size(0), *out.shape[1:]))
            outputs[idx] = out
        if self.model.for_inference and self.model.cfg.head.task == "classification" and self.model.fc is not None:
            outputs = torch.softmax(outputs, dim=1)
        return outputs


def group_indices(lengths: Tensor, bucket_size: int, shapes: CompiledShapes | None = None) -> list[Tensor]:
    """Jet indices per group: the fewest padded slots, or equal counts by multiplicity (``shapes.equal_groups``)."""
    if shapes is None or not shapes.equal_groups or bucket_size <= 0:
        return length_buckets(lengths, bucket_size)
    return list(torch.argsort(lengths, stable=True).split(bucket_size))


def group_length(longest: int, slots: int, shapes: CompiledShapes | None = None) -> int:
    """A group's length: its longest jet, rounded up to ``shapes.length_multiple`` (at most ``slots``)."""
    if shapes is None:
        return longest
    return min(-(-longest // shapes.length_multiple) * shapes.length_multiple, slots)


def compile_frozen(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``torch.compile`` of an inference function with dynamic shapes and inductor's ``freezing``: the weights become
    constants, so linear layers run prepacked oneDNN kernels with fused activations.

    Frozen weights must never serve other weights, and dynamo's guards do not see in-place weight updates (torch
    2.13 always inlines nn modules; the ``inline_inbuilt_nn_modules`` switch is a no-op there). So ``FastParT``
    resets dynamo whenever it builds a compiled engine: every engine then compiles its own weights, and
    ``engine_for`` builds a new engine when a weight changed. ``freezing`` is read whenever inductor compiles, so
    every call runs under it."""
    compiled = torch.compile(fn, dynamic=True)

    def run(*args: Tensor | None | int) -> Tensor:
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args)

    return run


_ENGINE_CACHE: list[tuple[weakref.ref, tuple, FastParT]] = []  # one entry: the last compiled engine


def engine_for(model: nn.Module, cfg: FastInferenceConfig) -> FastParT:
    """The fast engine of ``model``: built per call, except compiled ones, which are cached (compiling costs ~30 s)
    and rebuilt when ``cfg`` or any weight changed. In-place updates, ``load_state_dict`` included, bump a tensor's
    version counter, which is part of the cache key, so frozen weights never go stale."""
    if not cfg.compile:
        # folding a few small matrices costs microseconds and can never go stale after load_state_dict (the bf16
        # option also copies the weights per call: ~10 ms per batch)
        return FastParT(model, cfg)
    key = (cfg, tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers())))
    if _ENGINE_CACHE:
        ref, cached_key, engine = _ENGINE_CACHE[0]
        if ref() is model and cached_key == key:
            return engine
    engine = FastParT(model, cfg)
    _ENGINE_CACHE[:] = [(weakref.ref(model), key, engine)]
    return engine


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
    inference = model.cfg.inference
    cfg = FastInferenceConfig(bucket_size=inference.bucket_size, dtype=inference.inference_dtype,
                              compile=inference.inference_compile)
    return engine_for(model, cfg)(x, v, mask)
