"""Parameters, FLOPs and (optionally) a short same-budget training comparison of the attention variants.

Every variant is built exactly as weaver builds it: ``networks/transformer.py``'s ``get_model`` with the JetClass
kin data config and ``-o``-style options. FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass
in eval mode at a fixed input (1 synthetic jet of ``--particles`` real particles, ``profiling.loading``).
Training (``--train FILES``): the same jets, split, seed, optimiser and epochs for every variant; reports test
accuracy and the mean one-vs-rest AUC over the classes present in the files.

    .venv/bin/python scripts/variants_table.py --particles 64
    .venv/bin/python scripts/variants_table.py --train /tmp/variants/cmp/*.root --epochs 2 --max-jets 450 --only ...
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from profiling import loading

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_CONFIG = REPO_ROOT / "data" / "JetClass" / "JetClass_kin.yaml"
NETWORK = REPO_ROOT / "networks" / "transformer.py"
BASE = {"num_layers": 3, "num_cls_layers": 1, "embed_dims": (64, 64), "pair_embed_dims": (32, 32), "num_heads": 4}
VARIANTS: dict[str, dict[str, Any]] = {
    "ParT (baseline)": {},
    "differential attention": {"attention": "differential"},
    "value residual": {"value_residual": True},
    "4 register tokens": {"num_registers": 4},
    "local: 16 nearest in (eta, phi)": {"attn_knn": 16},
    "local: pT-rank window +-8": {"attn_window": 8},
    "pos. enc. 1D sin (pT rank)": {"pos_encoding": "sequence"},
    "pos. enc. 2D sin (eta, phi)": {"pos_encoding": "eta_phi"},
    "pos. enc. random Fourier": {"pos_encoding": "fourier"},
    "LayerScale + SwiGLU": {"layer_scale_init": 1e-5, "ffn_activation": "swiglu"},
    "latent encoder (1 particle block, 8 latents, 2 latent blocks)": {"num_layers": 1, "latent_tokens": 8,
                                                                       "latent_layers": 2},
    "latent decoder head (4 queries)": {"head": "latent", "head_queries": 4},
    "no pair bias (plain transformer)": {"pair_bias": False},
}


@lru_cache(maxsize=1)
def _data_config() -> Any:
    return loading.load_data_config(DATA_CONFIG)


def build(options: dict[str, Any]) -> torch.nn.Module:
    """The weaver model (JetTagger) of networks/transformer.py for the kin data config."""
    network = loading.import_network_config(NETWORK, name="_variants_table_network")
    model, _ = network.get_model(_data_config(), **{**BASE, **options})
    return model


def count(model: torch.nn.Module, particles: int) -> tuple[int, int]:
    """(parameters, forward FLOPs at ``particles``: 1 synthetic jet, all slots real); eval mode, trimming past its
    warm-up."""
    model.eval()
    data_config = _data_config()
    jet = loading.synthetic_inputs(data_config, batch_size=1, multiplicity=particles, length=particles)
    counter = FlopCounterMode(display=False)
    with counter:
        model(*(jet[k] for k in data_config.input_names))
    return loading.count_parameters(model), counter.get_total_flops()


def load_jets(files: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All jets of ``files`` through weaver's own preprocessing (test mode, no shuffling)."""
    jets = loading.load_real_jets(files, DATA_CONFIG, max_jets=None)
    return jets.inputs, torch.as_tensor(jets.labels)


def train_and_score(options: dict[str, Any], data: dict[str, torch.Tensor], labels: torch.Tensor, *,
                    epochs: int, seed: int, batch_size: int = 32, lr: float = 2e-3) -> dict[str, float]:
    """Same split/seed/budget for every variant: AdamW, cross entropy, ``epochs`` passes; test accuracy and AUC."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    n_test = len(labels) // 3
    test, train = order[:n_test], order[n_test:]
    names = ("pf_points", "pf_features", "pf_vectors", "pf_mask")
    torch.manual_seed(seed)
    model = build(options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = torch.nn.functional.cross_entropy(model(*(data[k][idx] for k in names)), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    train_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(*(data[k][test[i:i + 256]] for k in names)) for i in range(0, len(test), 256)])
    y = labels[test].numpy()
    present = np.unique(labels.numpy())
    probs = torch.softmax(logits[:, present], dim=1).numpy()  # renormalised over the classes in the files
    aucs = [roc_auc_score(y == c, probs[:, j]) for j, c in enumerate(present)]
    accuracy = float((logits.argmax(1).numpy() == y).mean())
    return {"accuracy": accuracy, "auc": float(np.mean(aucs)), "train_s": train_s, "n_train": len(train),
            "n_test": len(test)}


def table(rows: list[dict[str, Any]], *, with_training: bool) -> str:
    head = "| variant | options | params | MFLOP |" + (" test acc | mean AUC | train s |" if with_training else "")
    sep = "|---|---|---|---|" + ("---|---|---|" if with_training else "")
    lines = [head, sep]
    for r in rows:
        opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items()) or "(defaults)"
        line = f"| {r['variant']} | {opts} | {r['params']:,} | {r['flops'] / 1e6:.1f} |"
        if with_training:
            line += f" {r['accuracy']:.3f} | {r['auc']:.3f} | {r['train_s']:.0f} |"
        lines.append(line)
    return "\n".join(lines)


def run(*, particles: int, train_files: list[str] | None, epochs: int, seed: int, only: list[str] | None = None,
        max_jets: int | None = None) -> list[dict[str, Any]]:
    """Rows of the comparison: params and FLOPs for every variant, plus training scores when files are given.

    ``only``: keep variants whose name contains one of these strings; ``max_jets``: a seeded subsample of the jets.
    """
    data = load_jets(train_files) if train_files else None
    if data is not None and max_jets is not None and max_jets < len(data[1]):
        keep = torch.randperm(len(data[1]), generator=torch.Generator().manual_seed(seed + 1))[:max_jets]
        data = ({k: t[keep] for k, t in data[0].items()}, data[1][keep])
    variants = {n: o for n, o in VARIANTS.items() if only is None or any(s in n for s in only)}
    if not variants:
        raise ValueError(f"--only {only} matches no variant; names: {', '.join(VARIANTS)}")
    rows = []
    for name, options in tqdm(variants.items(), desc="variants"):
        params, flops = count(build(options), particles)
        row: dict[str, Any] = {"variant": name, "options": options, "params": params, "flops": flops}
        if data is not None:
            row.update(train_and_score(options, data[0], data[1], epochs=epochs, seed=seed))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=64, help="real particles in the FLOP-count input")
    parser.add_argument("--train", nargs="*", default=None, help="JetClass-layout ROOT files for the comparison")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="variant name substrings to keep (default: all)")
    parser.add_argument("--max-jets", type=int, default=None, help="seeded subsample of the jets for training")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here (and .json beside)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = run(particles=args.particles, train_files=args.train, epochs=args.epochs, seed=args.seed, only=args.only,
               max_jets=args.max_jets)
    text = table(rows, with_training=bool(args.train))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
