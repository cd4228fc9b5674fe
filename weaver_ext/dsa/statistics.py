"""What sparse attention measures in a training forward: auxiliary loss terms and per-layer statistics.

Each sparse layer appends one ``LayerRecord`` to the forward's context; ``summarize_records`` turns the records of
a forward into the weighted auxiliary loss, and ``AuxChannel`` carries that loss to the training loss and sums the
statistics over an epoch for weaver's log.
"""

from __future__ import annotations

import torch

from ..context import LayerRecord

__all__ = ["AUX_NAMES", "STAT_NAMES", "AuxChannel", "entropy", "layer_record", "masked_mean", "merge_layer_records",
           "summarize_records"]

Tensor = torch.Tensor

STAT_NAMES = ("kept_fraction", "entropy", "mass_kept")
AUX_NAMES = ("sparsity", "entropy", "distill")


def masked_mean(values: Tensor, real_query: Tensor | None) -> Tensor:
    """Mean of values (B, [H,] L) over real queries (and heads)."""
    if real_query is None:
        return values.mean()
    m = real_query.to(values.dtype)
    if values.dim() == 3:
        m = m.unsqueeze(1).expand_as(values)
    return (values * m).sum() / m.sum().clamp(min=1)


def entropy(weights: Tensor) -> Tensor:
    """Entropy over the last axis; zero weights contribute 0 with a finite gradient (xlogy's is NaN there)."""
    return -(weights * torch.log(torch.where(weights > 0, weights, torch.ones_like(weights)))).sum(-1)


def layer_record(layer: int, real_query: Tensor | None, *, kept: Tensor, entropy: Tensor, mass: Tensor,
                 distill: Tensor | None) -> LayerRecord:
    """One layer's loss terms (with gradient) and detached statistics."""
    aux = {"sparsity": 1.0 - mass, "entropy": entropy}
    if distill is not None:
        aux["distill"] = distill
    with torch.no_grad():
        stats = {"kept_fraction": float(masked_mean(kept, real_query)), "entropy": float(entropy),
                 "mass_kept": float(mass)}
        weight = float(kept.numel() if real_query is None else real_query.sum())
    return LayerRecord(layer=layer, aux=aux, stats=stats, weight=weight)


def merge_layer_records(records: list[LayerRecord]) -> list[LayerRecord]:
    """One record per layer: the records of one layer (one per length bucket) combined as the mean over all their
    real queries, which is what one forward over the padded batch records. A no-op with one record per layer."""
    by_layer: dict[int, list[LayerRecord]] = {}
    for record in records:
        by_layer.setdefault(record.layer, []).append(record)
    if all(len(group) == 1 for group in by_layer.values()):
        return records
    merged = []
    for layer, group in by_layer.items():
        total = sum(r.weight for r in group) or 1.0
        aux = {name: sum(r.aux[name] * (r.weight / total) for r in group) for name in group[0].aux}
        stats = {name: sum(r.stats[name] * r.weight for r in group) / total for name in group[0].stats}
        merged.append(LayerRecord(layer=layer, aux=aux, stats=stats, weight=total))
    return merged


def summarize_records(records: list[LayerRecord], weights: dict[str, float]) -> tuple[Tensor | None, dict[str, float]]:
    """(weighted auxiliary loss or None, mean of each term over the sparse layers) of one forward's records."""
    total: Tensor | None = None
    terms: dict[str, float] = {}
    for name in AUX_NAMES:
        values = [r.aux[name] for r in records if name in r.aux]
        if not values:
            continue
        mean = torch.stack(values).mean()  # mean over sparse layers
        terms[name] = float(mean.detach())
        if weights.get(name, 0.0) > 0:
            total = weights[name] * mean if total is None else total + weights[name] * mean
    return total, terms


class AuxChannel:
    """Carries a model's auxiliary loss of the last training forward to the loss, and its statistics to the log.

    Not a module (nothing is saved or synchronised); the model owns one and ``AuxLoss.bind`` connects the loss to it
    explicitly. This is the one place where a forward leaves something behind, because weaver calls
    ``loss(output, label)`` with nothing else.
    """

    def __init__(self) -> None:
        self.pending: Tensor | None = None
        self.last_terms: dict[str, float] = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.sums: dict[int, dict[str, float]] = {}
        self.counts: dict[int, int] = {}

    def publish(self, loss: Tensor | None, terms: dict[str, float], records: list[LayerRecord]) -> None:
        """Called by the model at the end of a training forward."""
        self.pending, self.last_terms = loss, terms
        for record in records:
            sums = self.sums.setdefault(record.layer, dict.fromkeys(STAT_NAMES, 0.0))
            for name, value in record.stats.items():
                sums[name] += value
            self.counts[record.layer] = self.counts.get(record.layer, 0) + 1

    def clear(self) -> None:
        """A forward without auxiliary terms (evaluation): nothing pending."""
        self.pending = None

    def pop_loss(self) -> Tensor | None:
        """The pending auxiliary loss, cleared so that it is added once."""
        loss, self.pending = self.pending, None
        return loss

    def epoch_stats(self, *, reset: bool = True) -> dict[int, dict[str, float]]:
        """Mean statistics per sparse layer over the training forwards since the last reset."""
        out = {layer: {k: s / self.counts[layer] for k, s in sums.items()} for layer, sums in sorted(self.sums.items())}
        if reset:
            self.reset_stats()
        return out
