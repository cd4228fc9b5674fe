"""Attention structure of a model on real inputs: how concentrated each layer's attention is, and what DSA would save.

Per particle block and head, on the real (non-padded) queries: the entropy of the attention distribution, the
effective number of attended particles exp(entropy), the attention mass in the top-k keys (k = 1 .. 32), and the
share of ParT's pair bias in the logits. Per layer, the smallest top-k that keeps 90/95/99% of the mass, and the
attention FLOPs at that k against dense.

Which modules are read (forward pre-hooks, nothing is changed or forked):
- weaver_ext's ParT family: every ``AttentionCore`` of the particle blocks gets (q, k, pair bias, padding mask).
  The map analysed is the layer's dense softmax map ``softmax(q k^T / sqrt(d) + bias)``: for softmax attention the
  map itself; for DSA top-k the dense map its keys are chosen from; for the DSA indexer the dense q.k map without
  pair bias (it builds the bias for the selected pairs only); for differential attention the first map (q1, k1).
- weaver-core's ``ParticleTransformer``: every ``weaver.nn.model.ParticleTransformer.Attention`` inside ``blocks``
  gets (query, key, padding mask, pair bias); q and k come from its ``in_proj`` (and ``q_norm``/``k_norm``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["KS", "MASS_LEVELS", "LayerMaps", "LayerResult", "attention_section", "bias_share", "capture_attention",
           "dsa_output_change", "dsa_saving", "head_statistics", "k_for_mass", "layer_summary", "mass_curve"]

Tensor = torch.Tensor
KS = (1, 2, 4, 8, 16, 32)
MASS_LEVELS = (0.90, 0.95, 0.99)


@dataclass
class LayerMaps:
    """One self-attention layer's maps on a batch: weights (B, H, L, L), real tokens (B, L), logit parts."""

    name: str
    weights: Tensor
    real: Tensor
    qk: Tensor  # q k^T / sqrt(d), (B, H, L, L)
    bias: Tensor | None  # pair bias (B, H, L, L)


def _maps(name: str, q: Tensor, k: Tensor, bias: Tensor | None, pad: Tensor | None) -> LayerMaps:
    """The dense softmax map of per-head q, k (B, H, L, D) with the additive bias and the key padding."""
    qk = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    logits = qk if bias is None else qk + bias
    real = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device) if pad is None else ~pad
    weights = torch.softmax(logits.masked_fill(~real[:, None, None, :], float("-inf")), dim=-1)
    return LayerMaps(name, weights.float(), real, qk.float(), None if bias is None else bias.float())


@dataclass
class LayerResult:
    """What is kept of one layer: the summary (JSON-ready) and the arrays the plots need."""

    summary: dict
    query_entropy: Tensor  # entropy of every (real query, head), flattened
    example_map: Tensor  # head-averaged map of the first jet, real particles only (n, n)


def _keep(maps: LayerMaps) -> LayerResult:
    """Summarise a layer at once (the (B, H, L, L) maps are not kept: a paper-size ParT has 8 of them)."""
    w, real = maps.weights, maps.real
    ent = -(w * torch.log(torch.where(w > 0, w, torch.ones_like(w)))).sum(-1)  # (B, H, L)
    n0 = int(real[0].sum())
    return LayerResult(layer_summary(maps), ent.transpose(1, 2)[real].flatten().cpu(),
                       w[0, :, :n0, :n0].mean(0).cpu())


def _ext_hook(name: str, store: list[LayerResult]):
    def hook(core: nn.Module, args: tuple, kwargs: dict) -> None:
        q, k = args[0], args[1]
        maps = getattr(core, "maps", None)
        if maps is not None and getattr(maps, "num_maps", 1) == 2:  # differential: the first map (q1, k1)
            q, k = q.chunk(2, dim=-1)[0], k.chunk(2, dim=-1)[0]
        store.append(_keep(_maps(name, q, k, kwargs.get("bias"), kwargs.get("key_padding_mask"))))
    return hook


def _weaver_hook(name: str, store: list[LayerResult]):
    def hook(attn: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0]
        batch, length, dim = x.shape
        heads = attn.num_heads
        q, k, _ = nn.functional.linear(x, attn.in_proj.weight, attn.in_proj.bias).chunk(3, dim=-1)
        q, k = (t.view(batch, length, heads, dim // heads) for t in (q, k))
        if getattr(attn, "q_norm", None) is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        pad = kwargs.get("key_padding_mask")
        store.append(_keep(_maps(name, q.transpose(1, 2), k.transpose(1, 2), kwargs.get("attn_mask"),
                                 None if pad is None else pad.bool())))
    return hook


def _particle_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of every particle-block attention the analysis reads, in forward order."""
    from weaver.nn.model.ParticleTransformer import Attention as WeaverAttention

    from weaver_ext.attention import AttentionCore

    found = []
    for name, module in model.named_modules():
        in_particle_block = ".blocks." in f".{name}" and "cls_blocks" not in name and "latent" not in name
        if isinstance(module, AttentionCore) and in_particle_block:
            found.append((name.removesuffix(".attn.core"), module, "weaver_ext"))
        elif isinstance(module, WeaverAttention) and in_particle_block:
            found.append((name.removesuffix(".attn"), module, "weaver-core"))
    return found


@torch.no_grad()
def capture_attention(model: nn.Module, inputs: Sequence[Tensor]) -> list[LayerResult]:
    """Run one forward of ``model`` on ``inputs``; one result per particle block, in order (empty: none found)."""
    store: list[LayerResult] = []
    handles = []
    for name, module, kind in _particle_attention_modules(model):
        hook = _ext_hook(name, store) if kind == "weaver_ext" else _weaver_hook(name, store)
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model.eval()(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return store


def mass_curve(weights: Tensor, real: Tensor, ks: Sequence[int]) -> Tensor:
    """Mean over real queries of the attention mass in the top-k keys, per head and k: (H, len(ks))."""
    top = weights.sort(dim=-1, descending=True).values.cumsum(-1)  # (B, H, L, L)
    idx = torch.tensor([min(k, top.size(-1)) - 1 for k in ks], device=top.device)
    masses = top.index_select(-1, idx)  # (B, H, L, K)
    m = real.to(masses.dtype)[:, None, :, None]
    return (masses * m).sum((0, 2)) / m.sum((0, 2)).clamp(min=1)


def head_statistics(maps: LayerMaps, ks: Sequence[int] = KS) -> dict[str, list]:
    """Per head: mean entropy (nats), mean effective number exp(entropy) and mean top-k mass over real queries."""
    w, real = maps.weights, maps.real
    ent = -(w * torch.log(torch.where(w > 0, w, torch.ones_like(w)))).sum(-1)  # (B, H, L)
    m = real.to(w.dtype)[:, None, :]
    count = m.sum((0, 2)).clamp(min=1)
    entropy = (ent * m).sum((0, 2)) / count
    effective = (ent.exp() * m).sum((0, 2)) / count
    return {"entropy": entropy.tolist(), "effective_number": effective.tolist(),
            "topk_mass": {k: col.tolist() for k, col in zip(ks, mass_curve(w, real, ks).T, strict=True)}}


def k_for_mass(maps: LayerMaps, level: float) -> int:
    """The smallest k whose mean top-k mass (over heads and real queries) reaches ``level``."""
    length = maps.weights.size(-1)
    curve = mass_curve(maps.weights, maps.real, range(1, length + 1)).mean(0)  # (L,)
    reached = (curve >= level - 1e-6).nonzero()
    return int(reached[0]) + 1 if len(reached) else length


def bias_share(maps: LayerMaps, *, per_head: bool = False) -> float | list[float] | None:
    """Mean |pair bias| / (mean |q.k / sqrt(d)| + mean |pair bias|) over real (query, key) pairs, for the layer or
    per head; None without a pair bias."""
    if maps.bias is None:
        return None
    pairs = (maps.real[:, :, None] & maps.real[:, None, :]).unsqueeze(1).to(maps.qk.dtype)  # (B, 1, L, L)
    dims = (0, 2, 3) if per_head else (0, 1, 2, 3)
    qk = (maps.qk.abs() * pairs).sum(dims)
    bias = (maps.bias.abs() * pairs).sum(dims)
    share = bias / (qk + bias).clamp(min=1e-12)  # the pair counts cancel
    return share.tolist() if per_head else float(share)


def layer_summary(maps: LayerMaps, ks: Sequence[int] = KS) -> dict:
    """Everything the report shows for one layer (heads averaged where a single number is printed)."""
    stats = head_statistics(maps, ks)
    stats["bias_share"] = bias_share(maps, per_head=True)
    mean_keys = float(maps.real.sum(1).float().mean())
    k_needed = {f"{level:g}": k_for_mass(maps, level) for level in MASS_LEVELS}
    return {
        "layer": maps.name, "heads": stats,
        "entropy": sum(stats["entropy"]) / len(stats["entropy"]),
        "effective_number": sum(stats["effective_number"]) / len(stats["effective_number"]),
        "topk_mass": {k: sum(v) / len(v) for k, v in stats["topk_mass"].items()},
        "bias_share": bias_share(maps), "mean_real_keys": mean_keys, "k_for_mass": k_needed,
        # attention score work at top-k against dense, per real query: k / (real keys)
        "flops_fraction_at_k": {level: min(k, mean_keys) / max(mean_keys, 1.0) for level, k in k_needed.items()},
    }


def _probabilities(out: Tensor) -> Tensor:
    """Softmax of the outputs unless they already are probabilities (models built for inference)."""
    out = out.float()
    is_prob = out.min() >= 0 and torch.allclose(out.sum(1), torch.ones(out.size(0)), atol=1e-3)
    return out if is_prob else torch.softmax(out, dim=1)


@torch.no_grad()
def dsa_output_change(network_config: str, data_config, model: nn.Module, options: dict, inputs: Sequence[Tensor],
                      k: int, *, layers: tuple[int, ...] | None = None, for_inference: bool) -> float | None:
    """max |d softmax| between ``model`` and the same weights run as DSA top-k (kind ``dsa_topk``, ``topk=k``, on
    particle blocks ``layers``, all when None); None when the network config does not take ``-o attention``."""
    from profiling.loading import build_model

    sparse_options = {**options, "attention": "dsa_topk", "topk": k, "attention_layers": layers}
    try:
        sparse, _ = build_model(network_config, data_config, options=sparse_options, for_inference=for_inference)
    except (ValueError, TypeError):  # not our ParT family: its get_model takes no -o attention
        return None
    missing, unexpected = sparse.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.endswith("dsa_step") for key in missing):
        return None
    dense_p, sparse_p = _probabilities(model.eval()(*inputs)), _probabilities(sparse.eval()(*inputs))
    return float((dense_p - sparse_p).abs().max())


def dsa_saving(layers: list[LayerResult], change_at_k) -> list[dict]:
    """Per layer and mass level (95%, 99%): the smallest top-k keeping that mass, the attention work at it against
    dense, and the output change when that layer alone runs DSA top-k at it (``change_at_k(k, (layer,))``); then a
    row "all" with the largest k of the layers applied to every layer (``change_at_k(k, None)``)."""
    rows = []
    for level in ("0.95", "0.99"):
        for index, layer in enumerate(layers):
            k = layer.summary["k_for_mass"][level]
            rows.append({"mass": level, "layer": layer.summary["layer"], "topk": k,
                         "attention_flops_fraction": layer.summary["flops_fraction_at_k"][level],
                         "max_abs_diff_softmax": change_at_k(k, (index,))})
        k = max(layer.summary["k_for_mass"][level] for layer in layers)
        fraction = sum(min(k, layer.summary["mean_real_keys"]) / max(layer.summary["mean_real_keys"], 1.0)
                       for layer in layers) / len(layers)
        rows.append({"mass": level, "layer": "all", "topk": k, "attention_flops_fraction": fraction,
                     "max_abs_diff_softmax": change_at_k(k, None)})
    return rows


def attention_section(cfg, loaded, data_config, inputs: Sequence[Tensor], out) -> dict:
    """The profiler's ``--attention`` section: the given weights (and a random init beside trained weights),
    what DSA would save with the first, and the plots (written to ``out``)."""
    from profiling import report
    from profiling.loading import load_model

    first_label = "trained" if cfg.weights else "random init"
    sides = {first_label: capture_attention(loaded.model, inputs)}
    if not sides[first_label]:
        return {"note": "no particle-block attention found: the section covers ParT-like models (docs/profiling.md)"}
    if cfg.weights:
        untrained = load_model(cfg.network_config, data_config, weights=None, options=cfg.options,
                               device=cfg.device, for_inference=cfg.for_inference, seed=cfg.seed + 1)
        sides["random init"] = capture_attention(untrained.model, inputs)

    def change_at(k: int, layers: tuple[int, ...] | None) -> float | None:
        return dsa_output_change(cfg.network_config, data_config, loaded.model, cfg.options, inputs, k,
                                 layers=layers, for_inference=cfg.for_inference)

    return {"jets": int(inputs[0].size(0)), "ks": list(KS),
            "sides": {label: [layer.summary for layer in layers] for label, layers in sides.items()},
            "dsa": dsa_saving(sides[first_label], change_at), "dsa_side": first_label,
            "plots": report.plot_attention(sides, out)}
