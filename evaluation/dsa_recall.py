"""How much does DSA's two-stage key selection lose against scoring every key? Measured on real detector hits.

For every event the first DSA block's indexer scores all (hit, hit) pairs exhaustively; the two-stage selection
(block upper bounds, then exact scores inside the best blocks; ``weaver_ext/dsa/indexer.py``) picks its top-k per
hit. Two
numbers per hit, averaged over hits and events:
- recall: fraction of the chosen keys whose exhaustive score reaches the k-th best score (ties count as found);
- mass: indexer-softmax mass of the chosen keys / that of the exhaustive top-k.
Hits in the time order of the files (blocks follow the track) and randomly permuted (blocks are arbitrary).
The model is untrained (random indexer weights) unless ``--weights`` is given. Usage:
    python -m evaluation.dsa_recall /tmp/trk/test300/*.root --events 20 --topk 64
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from profiling.loading import load_data_config, load_real_inputs
from weaver_ext.checkpoint import load_checkpoint
from weaver_ext.dsa import IndexerCore, select_keys
from weaver_ext.dsa.indexer import blocks_per_query, indexer_scores
from weaver_ext.track import build_track_model

__all__ = ["selection_recall"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TRACKS_YAML = REPO_ROOT / "data" / "Tracks" / "tracks.yaml"


def _capture_first_dsa_input(model: torch.nn.Module) -> tuple[IndexerCore, dict[str, torch.Tensor]]:
    """The first DSA indexer core and a dict that receives its block input on every forward."""
    core = next(m for m in model.modules() if isinstance(m, IndexerCore))
    captured: dict[str, torch.Tensor] = {}
    core.register_forward_pre_hook(lambda _m, args, kwargs: captured.__setitem__("x", kwargs["x"]), with_kwargs=True)
    return core, captured


def _event_recall(core: IndexerCore, x: torch.Tensor, topk: int) -> tuple[float, float]:
    """(recall, mass ratio) of the two-stage selection for one event's block input x (1, N, E)."""
    iq, ik, iw = core.indexer.project(x)
    exact = indexer_scores(iq, ik, iw, None)[0]  # (N, N)
    idx = select_keys(core.indexer, x, None, topk, block_size=core.block_size, blocks=core.blocks).idx
    chosen = exact.gather(-1, idx[0])  # (N, K)
    best = exact.topk(topk, dim=-1).values
    recall = (chosen >= best[:, -1:] - 1e-6).float().mean()
    log_p = torch.log_softmax(exact, dim=-1)
    mass = torch.logsumexp(log_p.gather(-1, idx[0]), -1).exp() / torch.logsumexp(best - exact.logsumexp(-1, True),
                                                                                   -1).exp()
    return float(recall), float(mass.mean())


def selection_recall(files: Sequence[str], *, events: int, topk: int, block: int, blocks: int | None = None,
                     weights: str | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean recall and mass ratio of the two-stage selection, hits in file (time) order and permuted."""
    torch.manual_seed(seed)
    data_config = load_data_config(TRACKS_YAML)
    model, _ = build_track_model(data_config, {"attention": "dsa", "topk": topk, "indexer_block_size": block,
                                              "indexer_blocks": blocks},
                                 where="evaluation/dsa_recall.py")
    if weights:
        load_checkpoint(model, weights)
    model.eval()
    attn, captured = _capture_first_dsa_input(model)
    inputs = load_real_inputs(files, TRACKS_YAML, max_jets=events)
    names = list(data_config.input_names)
    gen = torch.Generator().manual_seed(seed)
    sums = {"time order": [0.0, 0.0], "permuted": [0.0, 0.0]}
    hits = []
    with torch.no_grad():
        for i in range(next(iter(inputs.values())).shape[0]):
            model(*[inputs[k][i:i + 1] for k in names])  # trimmed to the event's hits
            x = captured["x"]
            n = x.size(1)
            if blocks_per_query(topk, block_size=block, blocks=blocks) * block >= n:
                continue  # too few hits: the selection is exhaustive, nothing to measure
            hits.append(n)
            for order, rows in (("time order", torch.arange(n)), ("permuted", torch.randperm(n, generator=gen))):
                r, m = _event_recall(attn, x[:, rows], topk)
                sums[order][0] += r
                sums[order][1] += m
    if not hits:
        smallest = blocks_per_query(topk, block_size=block, blocks=blocks) * block
        raise RuntimeError(f"no event has more than {smallest} hits")
    out = {order: {"recall": s[0] / len(hits), "mass_ratio": s[1] / len(hits)} for order, s in sums.items()}
    out["events"] = {"count": len(hits), "mean_hits": sum(hits) / len(hits)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--block", type=int, default=64, help="indexer_block_size")
    parser.add_argument("--blocks", type=int, default=None, help="indexer_blocks (default: automatic)")
    parser.add_argument("--weights", default=None, help="trained track_transformer state_dict (attention 'dsa')")
    args = parser.parse_args()
    result = selection_recall(args.files, events=args.events, topk=args.topk, block=args.block,
                              blocks=args.blocks, weights=args.weights)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
