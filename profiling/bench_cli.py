"""The real ``weaver`` CLI: our networks/part.py against weaver-core's ParT, same files, seeds and budget.

``python -m profiling.bench_cli --train 'DIR/*.root' --val 'DIR/*.root' [--seeds 1 2] [--epochs 2]
[--steps-per-epoch 64] [--batch-size 128] [--out-dir DIR]``

Runs ``weaver`` once per (network config, seed), one after the other, with 2 threads (``OMP_NUM_THREADS``), and
reads weaver's own log: the training speed of each epoch ("Processed N entries ... avg. speed"), its wall time, and
the validation accuracy after the last epoch ("Eval AvgAcc"). Prints a table with the mean and spread over seeds.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from profiling.loading import expand_input_files, weaver_exe

__all__ = ["NETWORKS", "main", "parse_log"]

REPO_ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {
    "weaver-core ParT": REPO_ROOT / "profiling" / "weaver_core_part.py",
    "weaver_ext ParT (bucketed)": REPO_ROOT / "networks" / "part.py",
}
_SPEED = re.compile(r"Processed (\d+) entries in total \(avg\. speed ([\d.]+) entries/s\)")
_EVAL_ACC = re.compile(r"Eval AvgLoss: ([\d.]+), AvgAcc: ([\d.]+)")


def parse_log(text: str) -> dict[str, list[float]]:
    """weaver's training log: per epoch, the training speed (jets/s), training time (s) and validation accuracy."""
    speeds = [(int(n), float(s)) for n, s in _SPEED.findall(text)]
    train = speeds[0::2]  # weaver logs training, then validation, each epoch
    return {"train_jets_per_s": [s for _, s in train], "train_time_s": [n / s for n, s in train],
            "val_acc": [float(a) for _, a in _EVAL_ACC.findall(text)]}


def run_one(network: Path, seed: int, args: argparse.Namespace, out: Path) -> dict[str, list[float]]:
    log = out / f"{network.stem}_seed{seed}.log"
    cmd = [weaver_exe(), "--data-train", *args.train, "--data-val", *args.val, "--data-config", args.data_config,
           "--network-config", str(network), "-o", "seed", str(seed), "--model-prefix", str(out / f"{network.stem}_"
           f"{seed}" / "net"), "--num-epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
           "--batch-size", str(args.batch_size), "--optimizer", "adamw", "--start-lr", str(args.lr), "--gpus", "",
           "--num-workers", "1", "--fetch-step", "1", "--log-file", str(log)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=out)
    result = parse_log(log.read_text())
    result["wall_s"] = [time.perf_counter() - start]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", nargs="+", required=True, help="training ROOT file globs")
    p.add_argument("--val", nargs="+", required=True, help="validation ROOT file globs")
    p.add_argument("--data-config", default=str(REPO_ROOT / "data/JetClass/JetClass_full.yaml"))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps-per-epoch", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default="bench_cli_runs")
    args = p.parse_args(argv)
    args.train, args.val = expand_input_files(args.train), expand_input_files(args.val)
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'network':28s} {'seed':>4s} {'train jets/s':>13s} {'epoch time (s)':>15s} {'val acc':>8s}")
    summary = {}
    for seed in args.seeds:
        for name, network in NETWORKS.items():
            r = run_one(network, seed, args, out)
            summary.setdefault(name, []).append(r)
            print(f"{name:28s} {seed:4d} {statistics.fmean(r['train_jets_per_s']):13.1f} "
                  f"{statistics.fmean(r['train_time_s']):15.1f} {r['val_acc'][-1]:8.4f}", flush=True)
    for name, runs in summary.items():
        speed = statistics.fmean(statistics.fmean(r["train_jets_per_s"]) for r in runs)
        accs = [r["val_acc"][-1] for r in runs]
        spread = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        print(f"{name}: mean train speed {speed:.1f} jets/s, val acc {statistics.fmean(accs):.4f} "
              f"(seeds {', '.join(f'{a:.4f}' for a in accs)}; std {spread:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
