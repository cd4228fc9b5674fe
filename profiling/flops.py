"""FLOP counting three ways: ptflops, torch's ``FlopCounterMode`` and our own analytic module-hook counter.

Conventions of our counter (see docs/profiling.md):
- 1 multiply-accumulate (MAC) = 2 FLOPs. ``matmul_flops`` counts every MAC of Linear / Conv / attention products
  (in-projections, ``q @ k^T``, ``softmax(.) @ v``, pair-embedding convolutions, ParticleNet's kNN distance
  matrix). Bias additions are *not* in ``matmul_flops`` (the same convention as ``FlopCounterMode``).
- ``other_flops`` is an estimate of elementwise work (norms, activations, softmax, masks, biases) with fixed costs
  per element (table ``ELEMENTWISE_COST``); it is reported separately because it is convention-dependent.
- A rule counts only the work a module does *itself*, not the work of child modules it calls (those are hooked
  on their own). A model extends the counter with ``@register_flops(MyModule)`` or a ``flops(args, kwargs, out)``
  method on the module returning ``matmul_flops`` or ``(matmul_flops, other_flops)``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weaver_ext.attention import attention_score_flops

FlopRule = Callable[[nn.Module, tuple, dict, Any], tuple[int, int]]
_RULES: dict[type, FlopRule] = {}

# elementwise cost estimates (FLOPs per output element) for ``other_flops``
ELEMENTWISE_COST = {"relu": 1, "gelu": 8, "silu": 4, "sigmoid": 4, "layernorm": 5, "batchnorm": 2, "softmax": 5}


@dataclass
class FlopReport:
    """Our count for one forward call: totals, per module type and per top-level block."""

    matmul_flops: int = 0
    other_flops: int = 0
    by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_block: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    uncovered: list[str] = field(default_factory=list)

    @property
    def macs(self) -> float:
        """Multiply-accumulates (= matmul FLOPs / 2)."""
        return self.matmul_flops / 2


def register_flops(*module_types: type) -> Callable[[FlopRule], FlopRule]:
    """Decorator: register ``rule(module, args, kwargs, output) -> (matmul_flops, other_flops)`` for module types."""

    def deco(rule: FlopRule) -> FlopRule:
        for t in module_types:
            _RULES[t] = rule
        return rule

    return deco


def _numel(x: Any) -> int:
    return int(x.numel()) if isinstance(x, torch.Tensor) else 0


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


@register_flops(nn.Linear)
def _linear(m: nn.Linear, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    n_out = _numel(out)
    return 2 * n_out * m.in_features, n_out if m.bias is not None else 0


@register_flops(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m: nn.Conv1d, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    n_out = _numel(out)
    per_out = (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return 2 * n_out * per_out, n_out if m.bias is not None else 0


@register_flops(nn.LayerNorm, nn.RMSNorm)
def _layernorm(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return 0, ELEMENTWISE_COST["layernorm"] * _numel(out)


@register_flops(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batchnorm(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    return 0, ELEMENTWISE_COST["batchnorm"] * _numel(out)


def _elementwise(kind: str) -> FlopRule:
    def rule(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        return 0, ELEMENTWISE_COST[kind] * _numel(out)

    return rule


register_flops(nn.ReLU)(_elementwise("relu"))
register_flops(nn.GELU)(_elementwise("gelu"))
register_flops(nn.SiLU)(_elementwise("silu"))
register_flops(nn.Sigmoid)(_elementwise("sigmoid"))
register_flops(nn.Softmax)(_elementwise("softmax"))


def attention_core_flops(*, batch: int, heads: int, q_len: int, k_len: int, head_dim: int) -> tuple[int, int]:
    """Dense attention core: ``q @ k^T`` and ``softmax(.) @ v`` (2 MACs per score per head dim) + softmax/mask.

    The formula is weaver_ext's (``attention_score_flops``), so weaver-core's attention and ours count alike.
    """
    return attention_score_flops(batch * heads * q_len * k_len, qk_dim=head_dim, v_dim=head_dim)


def _in_projection_flops(q: torch.Tensor, k: torch.Tensor, embed_dim: int) -> int:
    """Packed q/k/v projections done functionally (not through a child nn.Linear call)."""
    return 2 * embed_dim * embed_dim * (q.shape[0] * q.shape[1] + 2 * k.shape[0] * k.shape[1])


def dense_attention_flops(m: nn.Module, query: torch.Tensor, key: torch.Tensor) -> tuple[int, int]:
    """Packed in-projection done functionally + dense core, for modules with embed_dim/num_heads/head_dim."""
    proj = _in_projection_flops(query, key, m.embed_dim)
    core, other = attention_core_flops(
        batch=query.shape[0], heads=m.num_heads, q_len=query.shape[1], k_len=key.shape[1], head_dim=m.head_dim
    )
    return proj + core, other


def _register_weaver_ext_rules() -> None:
    """weaver_ext's attention skeleton: the packed in-projection is functional; out_proj is a hooked child Linear and
    the attention itself is its core, a child module that counts its own work (``AttentionCore.flops``: dense,
    differential maps, DSA top-k with its sort, DSA indexer over the kept keys only)."""
    try:
        from weaver_ext.attention import MultiheadAttention
    except ImportError:
        return

    @register_flops(MultiheadAttention)
    def _ext_attention(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key")
        return _in_projection_flops(query, query if key is None else key, m.embed_dim), 0


def _register_weaver_rules() -> None:
    """Rules for weaver-core modules that do matmuls outside child-module calls."""
    try:
        from weaver.nn.model.ParticleNet import EdgeConvBlock
        from weaver.nn.model.ParticleTransformer import Attention
    except ImportError:  # weaver not installed: generic rules only
        return

    @register_flops(Attention)
    def _weaver_attention(m: Attention, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        mm, other = dense_attention_flops(m, query, key)
        bias = (query.shape[0] * query.shape[1] + 2 * key.shape[0] * key.shape[1]) * m.embed_dim
        return mm, other + (bias if m.in_proj.bias is not None else 0)

    @register_flops(EdgeConvBlock)
    def _edgeconv(m: EdgeConvBlock, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
        points = args[0] if args else kwargs["points"]  # (N, C, P): kNN needs the (P x P) inner products
        n, c, p = points.shape
        return 2 * n * p * p * c, 3 * n * p * p


_register_weaver_rules()
_register_weaver_ext_rules()


@register_flops(nn.MultiheadAttention)
def _torch_mha(m: nn.MultiheadAttention, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
    query, key = args[0], args[1]
    if not m.batch_first:  # (L, N, E) -> count with (N, L)
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    proj = _in_projection_flops(query, key, m.embed_dim)
    core, other = attention_core_flops(
        batch=query.shape[0], heads=m.num_heads, q_len=query.shape[1], k_len=key.shape[1], head_dim=m.head_dim
    )
    out_proj = 2 * query.shape[0] * query.shape[1] * m.embed_dim * m.embed_dim  # called functionally inside MHA
    return proj + core + out_proj, other


def _rule_for(module: nn.Module) -> FlopRule | None:
    if hasattr(module, "flops") and callable(module.flops):

        def method_rule(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> tuple[int, int]:
            res = m.flops(args, kwargs, out)
            return (int(res[0]), int(res[1])) if isinstance(res, tuple) else (int(res), 0)

        return method_rule
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def _block_name(name: str, depth: int = 3) -> str:
    """Group a qualified module name by its first components (``mod.blocks.3.attn`` -> ``mod.blocks.3``)."""
    parts = name.split(".")
    return ".".join(parts[:depth]) if name else "(root)"


def count_flops(model: nn.Module, inputs: Sequence[torch.Tensor]) -> FlopReport:
    """Our analytic count: forward hooks compute FLOPs per module from the actual input/output shapes."""
    report = FlopReport()
    handles = []

    def make_hook(name: str, rule: FlopRule) -> Callable:
        def hook(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            mm, other = rule(m, args, kwargs, out)
            report.matmul_flops += mm
            report.other_flops += other
            report.by_type[type(m).__name__] += mm
            report.by_block[_block_name(name)] += mm

        return hook

    for name, module in model.named_modules():
        rule = _rule_for(module)
        if rule is not None:
            handles.append(module.register_forward_hook(make_hook(name, rule), with_kwargs=True))
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    report.by_type = dict(report.by_type)
    report.by_block = dict(report.by_block)
    return report


def torch_flop_count(model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """``torch.utils.flop_counter.FlopCounterMode`` total (FLOPs, 2 per MAC).

    Run with grad *enabled* (model still in eval): in torch 2.13 FlopCounterMode's module tracker fails on weaver's
    ParT under ``no_grad``/``inference_mode`` ("Expected gradient function to be set").
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with torch.enable_grad(), counter:
            model(*inputs)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return {"flops": None, "error": f"{type(exc).__name__}: {exc}"}
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "by_op": by_op, "error": None}


class _TupleInput(nn.Module):
    """ptflops calls ``model(**batch)``; this adapter keeps the positional weaver inputs."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, **kwargs: torch.Tensor) -> Any:
        return self.model(*[kwargs[n] for n in self.names])


def ptflops_count(model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """ptflops (pytorch backend, module hooks only) MACs for the whole batch; it misses functional attention."""
    try:
        from ptflops import get_model_complexity_info
    except ImportError as exc:
        return {"macs": None, "error": f"ptflops not installed: {exc}"}
    names = [f"in{i}" for i in range(len(inputs))]
    wrapper = _TupleInput(model, names)
    sink = io.StringIO()
    try:
        with torch.inference_mode(), contextlib.redirect_stdout(sink):
            macs, params = get_model_complexity_info(
                wrapper,
                (1,),
                input_constructor=lambda _res: dict(zip(names, inputs, strict=True)),
                as_strings=False,
                print_per_layer_stat=False,
                ost=sink,
                backend="pytorch",
            )
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return {"macs": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"macs": float(macs) if macs is not None else None, "params": params, "error": None}


def all_counts(model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The three counters side by side, normalised per jet (batch = first input's dim 0)."""
    batch = int(inputs[0].shape[0])
    ours = count_flops(model, inputs)
    tfc = torch_flop_count(model, inputs)
    ptf = ptflops_count(model, inputs)
    per_jet = {
        "ours_matmul_flops": ours.matmul_flops / batch,
        "ours_other_flops": ours.other_flops / batch,
        "ours_macs": ours.macs / batch,
        "flopcountermode_flops": tfc["flops"] / batch if tfc["flops"] is not None else None,
        "ptflops_macs": ptf["macs"] / batch if ptf.get("macs") is not None else None,
    }
    return {
        "batch": batch,
        "per_jet": per_jet,
        "ours_by_type": {k: v / batch for k, v in sorted(ours.by_type.items(), key=lambda kv: -kv[1])},
        "ours_by_block": {k: v / batch for k, v in ours.by_block.items()},
        "flopcountermode_by_op": {k: v / batch for k, v in (tfc.get("by_op") or {}).items()},
        "errors": {"flopcountermode": tfc["error"], "ptflops": ptf["error"]},
    }
