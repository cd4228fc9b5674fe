"""Accuracy study: dense ParT vs DSA-ParT test accuracy after identical training with the real ``weaver`` CLI.

Every variant (dense ParT; DSA-ParT keeping ``--kept`` of the keys in topk and indexer mode; the indexer with a
warm-up from dense) is trained on the same files with the same budget through ``networks/dsa_part.py`` and
``-o`` options, predicts the same test files with its best epoch, and is scored by test accuracy. Usage:

    .venv/bin/python -m evaluation.dsa_accuracy --train /tmp/dsa_acc2/train/*.root \\
        --test /tmp/dsa_acc2/test/*.root --epochs 4 --repeats 2 --dir /tmp/acc2_runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from profiling.loading import load_data_config, weaver_exe

__all__ = ["ACCURACY_OPTS", "NETWORK", "accuracy_comparison", "accuracy_variants", "format_accuracy", "main",
           "train_and_score", "uproot_entries"]

REPO_ROOT = Path(__file__).resolve().parents[1]
NETWORK = REPO_ROOT / "networks" / "dsa_part.py"
ACCURACY_OPTS = {"num_layers": "2", "num_cls_layers": "1", "embed_dims": "(32,32)", "pair_embed_dims": "(16,16)",
                 "num_heads": "4"}


def accuracy_variants(kept: float, warmup_steps: int) -> dict[str, dict[str, str]]:
    """The compared models: dense ParT and DSA-ParT keeping ``kept`` of the keys (faithful topk and indexer modes;
    the indexer also with a warm-up that starts dense and reaches ``kept`` after ``warmup_steps`` training steps, with
    the angular prior ``indexer_prior='angle'``, with both, and with the pair prior ``indexer_prior='pair'``)."""
    sparse = {"dsa_enabled": "True", "sparsity_ratio": repr(kept)}
    indexer = {**sparse, "dsa_mode": "'indexer'"}
    warmup = {**indexer, "sparsity_ratio": "1.0", "target_sparsity": repr(kept), "sparsity_schedule": "'linear'",
              "sparsity_steps": str(warmup_steps)}
    prior = {"indexer_prior": "'angle'"}
    return {"dense": {"attention": "'softmax'"}, f"dsa_topk_{kept:g}": sparse, f"dsa_indexer_{kept:g}": indexer,
            f"dsa_indexer_warmup_{kept:g}": warmup, f"dsa_indexer_prior_{kept:g}": {**indexer, **prior},
            f"dsa_indexer_prior_warmup_{kept:g}": {**warmup, **prior},
            f"dsa_indexer_pair_{kept:g}": {**indexer, "indexer_prior": "'pair'"}}


def train_and_score(run: Path, options: dict[str, str], *, train: list[str], test: list[str], epochs: int,
                    data_config: Path, labels: list[str]) -> float:
    """Train with the real weaver CLI, predict the test files with the best epoch, return the test accuracy."""
    import numpy as np
    import uproot

    weaver = weaver_exe()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    run.mkdir(parents=True, exist_ok=True)
    opts = [a for k, v in {**ACCURACY_OPTS, **options}.items() for a in ("-o", k, v)]
    common = ["--data-config", str(data_config), "--network-config", str(NETWORK),
              *opts, "--gpus", "", "--num-workers", "0", "--fetch-step", "1"]
    subprocess.run([weaver, "--data-train", *train, *common, "--model-prefix", str(run / "net"), "--num-epochs",
                    str(epochs), "--batch-size", "64", "--start-lr", "3e-3", "--optimizer", "adamw",
                    "--log-file", str(run / "train.log")], check=True, cwd=run, capture_output=True, env=env)
    best = run / "net_best_epoch_state.pt"  # written only when validation accuracy beats 0: else the last epoch
    checkpoint = best if best.is_file() else run / f"net_epoch-{epochs - 1}_state.pt"
    subprocess.run([weaver, "--predict", "--data-test", *test, *common, "--model-prefix",
                    str(checkpoint), "--batch-size", "256", "--predict-output",
                    str(run / "pred.root")], check=True, cwd=run, capture_output=True, env=env)
    events = uproot.open(run / "pred.root")["Events"].arrays(library="np")
    scores = np.stack([events[f"score_{label}"] for label in labels], axis=1)
    return float((scores.argmax(1) == events["_label_"]).mean())


def accuracy_comparison(train: list[str], test: list[str], *, workdir: Path, epochs: int, kept: float,
                        data_config: Path, repeats: int = 1, warmup_steps: int = 150,
                        only: list[str] | None = None) -> dict[str, list[float]]:
    """Test accuracies of every variant after identical weaver training, ``repeats`` independent runs each.

    Runs are interleaved (run r of every variant before run r + 1) so a change of machine load hits all variants.
    """
    from tqdm import tqdm

    labels = list(load_data_config(data_config).label_value)
    variants = accuracy_variants(kept, warmup_steps)
    if only:
        unknown = sorted(set(only) - set(variants))
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; valid: {list(variants)}")
        variants = {name: opts for name, opts in variants.items() if name in only}
    out: dict[str, list[float]] = {name: [] for name in variants}
    jobs = [(r, name) for r in range(repeats) for name in variants]
    for r, name in tqdm(jobs, desc="weaver runs"):
        seed = {"seed": str(1000 + r)} if repeats > 1 else {}
        out[name].append(train_and_score(workdir / f"{name}_run{r}", {**variants[name], **seed}, train=train,
                                         test=test, epochs=epochs, data_config=data_config, labels=labels))
    return out


def format_accuracy(results: dict[str, list[float]], n_test: int) -> str:
    """Markdown table: accuracy per run, mean, spread over runs and difference of the means to dense ParT."""
    import numpy as np

    dense = float(np.mean(results["dense"])) if results.get("dense") else float("nan")
    lines = ["| model | runs | accuracy per run | mean | std over runs | mean - dense |", "|---|---|---|---|---|---|"]
    for name, accs in results.items():
        a = np.asarray(accs)
        std = f"{a.std(ddof=1):.4f}" if len(a) > 1 else "-"
        lines.append(f"| {name} | {len(a)} | {', '.join(f'{x:.4f}' for x in a)} | {a.mean():.4f} | {std} | "
                     f"{a.mean() - dense:+.4f} |")
    p = float(np.mean(next(iter(results.values()))))
    lines.append(f"\nTest jets: {n_test}; binomial error of one accuracy ~ {np.sqrt(p * (1 - p) / n_test):.4f}.")
    return "\n".join(lines)


def uproot_entries(path: str) -> int:
    """Number of jets in a generated file (tree ``tree``)."""
    import uproot

    with uproot.open(path) as f:
        return int(f["tree"].num_entries)


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    """CLI: train and score every variant, print the raw accuracies (JSON) and the Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.dsa_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", required=True, help="JetClass-layout ROOT files for training")
    parser.add_argument("--test", nargs="+", required=True, help="ROOT files the accuracy is measured on")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--kept", type=float, default=0.25, help="fraction of the real keys DSA keeps")
    parser.add_argument("--warmup-steps", type=int, default=150,
                        help="steps from dense to the kept fraction for the indexer warm-up variant")
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants")
    parser.add_argument("--repeats", type=int, default=1, help="independent runs per model (-o seed 1000+r)")
    parser.add_argument("--dir", type=Path, default=Path("dsa_accuracy_runs"), help="work directory of the runs")
    parser.add_argument("--data-config", type=Path, default=REPO_ROOT / "data" / "JetClass" / "JetClass_kin.yaml")
    args = parser.parse_args(argv)
    try:
        acc = accuracy_comparison(args.train, args.test, workdir=args.dir.resolve(), epochs=args.epochs,
                                  kept=args.kept, data_config=args.data_config, repeats=args.repeats,
                                  warmup_steps=args.warmup_steps, only=args.only)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(acc, indent=1))
    print(format_accuracy(acc, sum(uproot_entries(f) for f in args.test)))
    return acc


if __name__ == "__main__":
    main()
