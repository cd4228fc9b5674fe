"""How well does DSA's indexer choose keys? Two recalls per indexer layer, measured on real inputs, one event at a time.

- **selection recall**: the fraction of the keys the selection picks (two-stage for long inputs: block bounds, then
  exact scores inside the best blocks, ``weaver_ext/dsa/indexer.py``) whose exhaustive indexer score reaches the
  exhaustive k-th best (ties count as found). 1 by construction wherever the selection is exhaustive (jets, and
  hits with ``indexer_blocks`` covering every key).
- **attention recall**: the fraction of the keys the indexer picks that are among the k keys the layer's *dense*
  attention (q.k / sqrt(d) + ParT's pair bias over every key, averaged over heads) weights most; and the dense
  attention mass the indexer's keys hold relative to those best k. This is what decides whether sparse attention
  can match dense: the indexer does not see the pair features (unless ``indexer_prior='pair'`` gives them to it).

Works for any network config whose model has DSA indexer layers (networks/track_transformer.py and
networks/dsa_part.py with ``-o attention "'dsa'" -o dsa_mode "'indexer'"``), trained (``--weights``, a weaver
``*_state.pt``) or random. Usage (docs/dsa.md):

    python -m profiling.dsa_recall /tmp/b19/test/*.root --network networks/track_transformer.py \\
        --data-config data/Tracks/tracks.yaml --weights RUN/net_epoch-12_state.pt -o attention "'dsa'" -o topk 16 ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from profiling.loading import (
    add_network_option_argument,
    load_data_config,
    load_model,
    load_real_inputs,
    parse_network_options,
)
from weaver_ext.dsa import IndexerCore, select_keys
from weaver_ext.dsa.indexer import indexer_scores, pair_prior_scores

__all__ = ["indexer_recall", "layer_recall", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def layer_recall(core: IndexerCore, call: dict, *, blocks: int | None) -> dict[str, float]:
    """Both recalls of one indexer layer for one event; ``call``: the core's captured forward arguments."""
    q, k, x, pad, ctx = call["q"], call["k"], call["x"], call["key_padding_mask"], call["ctx"]
    kb = int(core.kept_keys(k, pad, ctx)[0].max())
    real = torch.ones(x.shape[:2], dtype=torch.bool) if pad is None else ~pad
    iq, ik, iw = core.indexer.project(x)
    dense_pairs = call.get("bias") if core.indexer.pair_proj is not None else None  # the pair prior reads it
    pair = core.indexer.pair_terms(x, dense_pairs)
    exact = indexer_scores(iq, ik, iw, pad, core.indexer.prior_terms(x, ctx.directions),
                           None if pair is None else pair_prior_scores(*pair))[0]  # (N, N)
    blocks = core.blocks if blocks is None else blocks
    idx = select_keys(core.indexer, x, pad, kb, block_size=core.block_size, blocks=blocks,
                      directions=ctx.directions, pair_bias=dense_pairs).idx[0]  # (N, kb)
    chosen = exact.gather(-1, idx)
    selection = (chosen >= exact.topk(kb, dim=-1).values[:, -1:] - 1e-6).float().mean(-1)
    n = x.size(1)
    all_keys = torch.arange(n).expand(1, n, n)
    if dense_pairs is not None:
        bias = dense_pairs
    else:
        bias = ctx.pair_fn(all_keys, torch.ones(1, n, n, dtype=torch.bool), 0) if ctx.pair_fn is not None else 0.0
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1)) + bias  # (1, H, N, N)
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    attention = torch.softmax(scores, dim=-1).mean(1)[0]  # (N, N), head-averaged as the distillation target
    best = attention.topk(kb, dim=-1)
    in_best = torch.zeros_like(attention, dtype=torch.bool).scatter_(-1, best.indices, True)
    recall = in_best.gather(-1, idx).float().mean(-1)
    mass = attention.gather(-1, idx).sum(-1) / best.values.sum(-1)
    rows = real[0]
    return {"selection_recall": float(selection[rows].mean()), "attention_recall": float(recall[rows].mean()),
            "attention_mass_ratio": float(mass[rows].mean()), "keys": n, "k": kb}


def _permuted(event: list[torch.Tensor], mask: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """One event's inputs (1, C, L) with its real elements in random order (padding stays behind them)."""
    n = int(mask.sum())
    order = torch.cat((torch.randperm(n, generator=generator), torch.arange(n, mask.size(-1))))
    return [t[..., order] for t in event]


def indexer_recall(files: Sequence[str], *, network: str | Path, data_config: str | Path, weights: str | None,
                   options: dict, events: int, blocks: int | None = None, seed: int = 0,
                   permute: bool = False) -> dict:
    """Mean recalls per indexer layer over ``events`` events (one forward each, eval mode). ``permute``: each
    event's elements in random order (blocks of the two-stage selection then lose the input order's coherence)."""
    config = load_data_config(data_config)
    loaded = load_model(network, config, weights=weights, options=options, for_inference=False, seed=seed)
    cores = [m for m in loaded.model.modules() if isinstance(m, IndexerCore)]
    if not cores:
        raise ValueError(f"{network}: the model has no DSA indexer layer (use -o attention \"'dsa'\" and "
                         "-o dsa_mode \"'indexer'\")")
    calls: dict[int, dict] = {}

    def capture(layer: int):
        def hook(_module: IndexerCore, args: tuple, kwargs: dict) -> None:
            calls[layer] = dict(zip("qkv", args, strict=False), **kwargs)
        return hook

    for layer, core in enumerate(cores):
        core.register_forward_pre_hook(capture(layer), with_kwargs=True)
    inputs = load_real_inputs(files, data_config, max_jets=events)
    mask_name = next(name for name in loaded.input_names if name.endswith("mask"))
    generator = torch.Generator().manual_seed(seed)
    sums: dict[int, dict[str, float]] = {}
    count = next(iter(inputs.values())).shape[0]
    with torch.no_grad():
        for i in range(count):
            event = [inputs[name][i:i + 1] for name in loaded.input_names]
            if permute:
                event = _permuted(event, inputs[mask_name][i], generator)
            loaded.model(*event)
            for layer, core in enumerate(cores):
                for key, value in layer_recall(core, calls[layer], blocks=blocks).items():
                    sums.setdefault(layer, {}).setdefault(key, 0.0)
                    sums[layer][key] += value / count
    return {"events": count, "weights": loaded.weights, "options": options, "permuted": permute,
            "layers": {f"layer{layer}": values for layer, values in sums.items()}}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m profiling.dsa_recall", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="ROOT files the data config reads")
    parser.add_argument("--network", default=str(REPO_ROOT / "networks" / "track_transformer.py"))
    parser.add_argument("--data-config", default=str(REPO_ROOT / "data" / "Tracks" / "tracks.yaml"))
    parser.add_argument("--weights", default=None, help="trained state_dict (weaver's *_state.pt); default random")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=None,
                        help="indexer_blocks of the measured selection (default: the model's own)")
    parser.add_argument("--permute", action="store_true", help="each event's elements in random order")
    add_network_option_argument(parser)
    args = parser.parse_args(argv)
    try:
        options = parse_network_options(args.network_option)
        result = indexer_recall(args.files, network=args.network, data_config=args.data_config,
                                weights=args.weights, options=options, events=args.events, blocks=args.blocks,
                                permute=args.permute)
    except (ValueError, FileNotFoundError, OSError) as err:
        sys.exit(f"error: {err}")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
