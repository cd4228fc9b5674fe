"""Budget study for the muon-track models: angle and entry-point resolution against CPU wall-clock training time.

Each model of ``BUDGET_MODELS`` trains once per seed through the real ``weaver --regression-mode`` CLI on one torch
thread for ``--minutes`` of wall-clock time (counted from the process start: imports and data loading included),
two runs side by side. weaver saves a checkpoint after every (short) epoch; at each budget the checkpoint with the
best validation loss among those saved by then is predicted on the test files and scored with
``evaluation.regression_metrics``. The principal-axis fit (``evaluation.track_baseline``) is the untrained reference.
Usage (docs/tracks.md):

    .venv/bin/python -m evaluation.track_budget --train /tmp/b19/train/*.root --val /tmp/b19/val/*.root \\
        --test /tmp/b19/test/*.root --minutes 30 --budgets 10 20 30 --seeds 1 2 --out /tmp/b19/study
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from profiling.loading import weaver_exe

__all__ = ["BUDGET_MODELS", "BudgetModel", "checkpoint_at", "epoch_records", "main", "run_study", "summarize"]

REPO_ROOT = Path(__file__).resolve().parents[1]
NETWORK = REPO_ROOT / "networks" / "track_transformer.py"
DATA_CONFIG = REPO_ROOT / "data" / "Tracks" / "tracks.yaml"

# the model of docs/tracks.md's short CPU run, shared by every trained entry
COMMON_OPTIONS = {"embed_dims": "(64,64)", "pair_embed_dims": "(16,16)", "num_layers": "2", "num_heads": "4",
                  "num_cls_layers": "1"}


@dataclass(frozen=True)
class BudgetModel:
    """One entry of the study: weaver ``-o`` options, batch size and epoch length (epochs of ~2 minutes, so that
    checkpoints land close to every budget)."""

    label: str
    options: dict[str, str]
    batch_size: int
    steps_per_epoch: int
    val_events: int = 64
    extra: dict[str, str] = field(default_factory=dict)


BUDGET_MODELS: dict[str, BudgetModel] = {
    "dense_64": BudgetModel("dense, 64 highest-charge hits", {"max_hits": "64"}, batch_size=32, steps_per_epoch=150),
    "dense_all": BudgetModel("dense, all hits", {}, batch_size=4, steps_per_epoch=15, val_events=32),
    # exhaustive key selection up to 2048 hits (32 blocks of 64): the indexer scores are one matmul per event
    "dsa_all": BudgetModel("DSA indexer (top 16), all hits",
                           {"attention": "'dsa'", "topk": "16", "indexer_blocks": "32"}, batch_size=8,
                           steps_per_epoch=100),
}

_VALIDATION = re.compile(r"Epoch #(\d+): Current validation metric: ([-+0-9.eE]+|nan|inf)")
_STAMP = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]"
_TRAINING = re.compile(_STAMP + r" INFO: Epoch #(\d+) training")
_TRAIN_LOSS = re.compile(_STAMP + r" INFO: Train AvgLoss: ([-+0-9.eE]+|nan|inf)")


def _training_command(model: BudgetModel, seed: int, run: Path, files: dict[str, list[str]],
                      steps_per_epoch: int | None = None) -> list[str]:
    steps = steps_per_epoch or model.steps_per_epoch
    options = {**COMMON_OPTIONS, **model.options, "seed": str(seed)}
    return [weaver_exe(), "--regression-mode", "--data-config", str(run / "tracks.yaml"),
            "--network-config", str(NETWORK), *[a for k, v in options.items() for a in ("-o", k, v)],
            "--data-train", *files["train"], "--data-val", *files["val"], "--in-memory", "--in-memory-val",
            "--fetch-step", "1", "--fetch-step-val", "1", "--steps-per-epoch", str(steps),
            "--steps-per-epoch-val", str(max(1, model.val_events // model.batch_size)), "--num-epochs", "100000",
            "--batch-size", str(model.batch_size), "--start-lr", "2e-3", "--optimizer", "adamw",
            "--lr-scheduler", "none", "--gpus", "", "--num-workers", "0", "--model-prefix", str(run / "net"),
            "--log-file", str(run / "train.log")]


def _one_thread_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train_runs(jobs: list[tuple[str, int]], *, out: Path, files: dict[str, list[str]], minutes: float,
               parallel: int, steps_per_epoch: int | None = None) -> None:
    """Train every (model, seed) for ``minutes`` of wall-clock, ``parallel`` at a time; the start time is saved."""
    pending = list(jobs)
    running: list[tuple[str, subprocess.Popen, float, object]] = []
    while pending or running:
        while pending and len(running) < parallel:
            name, seed = pending.pop(0)
            run = out / f"{name}_seed{seed}"
            if run.exists():
                shutil.rmtree(run)
            run.mkdir(parents=True)
            shutil.copy(DATA_CONFIG, run / "tracks.yaml")  # weaver writes side files next to its data config
            log = open(run / "stdout.log", "w")
            start = time.time()
            command = _training_command(BUDGET_MODELS[name], seed, run, files, steps_per_epoch)
            proc = subprocess.Popen(command, cwd=run, stdout=log, stderr=subprocess.STDOUT, env=_one_thread_env())
            (run / "start_time").write_text(repr(start))
            running.append((run.name, proc, start, log))
            print(f"[{time.strftime('%H:%M:%S')}] started {run.name} for {minutes:g} min", flush=True)
        time.sleep(2)
        for item in list(running):
            label, proc, start, log = item
            elapsed = time.time() - start
            if proc.poll() is not None or elapsed >= minutes * 60:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
                running.remove(item)
                epochs = len(epoch_records(out / label))
                print(f"[{time.strftime('%H:%M:%S')}] stopped {label} after {elapsed / 60:.1f} min, {epochs} "
                      f"epochs saved (exit {proc.returncode})", flush=True)


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def epoch_records(run: Path) -> list[dict]:
    """The saved epochs of a run: epoch, minutes from the process start to the checkpoint, validation loss, mean
    training loss and training seconds of the epoch (from weaver's log)."""
    start = float((run / "start_time").read_text())
    log = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
    validation = {int(e): float(v) for e, v in _VALIDATION.findall(log)}
    begins = {int(e): _seconds(t) for t, e in _TRAINING.findall(log)}
    ends = [(_seconds(t), float(v)) for t, v in _TRAIN_LOSS.findall(log)]  # one per epoch, in epoch order
    records = []
    for path in run.glob("net_epoch-*_state.pt"):
        epoch = int(path.name.split("-")[1].split("_")[0])
        record = {"epoch": epoch, "minutes": (path.stat().st_mtime - start) / 60,
                  "val_loss": validation.get(epoch, float("nan")), "path": str(path)}
        if epoch < len(ends) and epoch in begins:
            record.update(train_loss=ends[epoch][1], train_seconds=ends[epoch][0] - begins[epoch])
        records.append(record)
    return sorted(records, key=lambda r: r["epoch"])


def checkpoint_at(records: list[dict], minutes: float) -> dict | None:
    """The checkpoint with the lowest validation loss among those saved within ``minutes`` (None if none was)."""
    saved = [r for r in records if r["minutes"] <= minutes and np.isfinite(r["val_loss"])]
    return min(saved, key=lambda r: r["val_loss"]) if saved else None


def _predict(name: str, record: dict, run: Path, test: list[str]) -> subprocess.Popen:
    model = BUDGET_MODELS[name]
    options = {**COMMON_OPTIONS, **model.options}
    output = run / f"pred_epoch{record['epoch']}.root"
    cmd = [weaver_exe(), "--regression-mode", "--predict", "--data-config", str(run / "tracks.yaml"),
           "--network-config", str(NETWORK), *[a for k, v in options.items() for a in ("-o", k, v)],
           "--data-test", *test, "--batch-size", str(model.batch_size), "--gpus", "", "--num-workers", "0",
           "--model-prefix", record["path"], "--predict-output", str(output)]
    log = open(run / f"predict_epoch{record['epoch']}.log", "w")
    return subprocess.Popen(cmd, cwd=run, stdout=log, stderr=subprocess.STDOUT, env=_one_thread_env())


def evaluate_runs(jobs: list[tuple[str, int]], *, out: Path, test: list[str], budgets: Sequence[float],
                  parallel: int) -> list[dict]:
    """Predict and score the checkpoint chosen at every budget (each checkpoint once), ``parallel`` at a time."""
    from evaluation.regression_metrics import load_predictions, track_metrics

    rows, todo = [], {}
    for name, seed in jobs:
        run = out / f"{name}_seed{seed}"
        records = epoch_records(run)
        for budget in budgets:
            chosen = checkpoint_at(records, budget)
            rows.append({"model": name, "seed": seed, "budget_min": budget, "checkpoint": chosen,
                         "epochs_saved": sum(r["minutes"] <= budget for r in records)})
            if chosen is not None and not (run / f"pred_epoch{chosen['epoch']}.root").is_file():
                todo[(run, chosen["epoch"])] = (name, chosen)  # each checkpoint predicted once
    queue, running = list(todo.items()), []
    while queue or running:
        while queue and len(running) < parallel:
            (run, epoch), (name, record) = queue.pop(0)
            running.append((run, epoch, _predict(name, record, run, test)))
        time.sleep(1)
        for item in list(running):
            run, epoch, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    print(f"predict failed for {run.name} epoch {epoch}: see {run}/predict_epoch{epoch}.log")
    for row in rows:
        if row["checkpoint"] is None:
            continue
        run = out / f"{row['model']}_seed{row['seed']}"
        pred = run / f"pred_epoch{row['checkpoint']['epoch']}.root"
        if pred.is_file():
            true, predicted = load_predictions(pred)[:2]
            row["metrics"] = track_metrics(true, predicted)
    return rows


def _values(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) or "-"


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.2f}" if values else "-"


def step_times(out: Path, jobs: list[tuple[str, int]], steps_per_epoch: int | None = None) -> dict[str, dict]:
    """Median training seconds per step and events per second of every model over its runs' epochs."""
    result = {}
    for name in dict.fromkeys(n for n, _ in jobs):
        model = BUDGET_MODELS[name]
        steps = steps_per_epoch or model.steps_per_epoch
        seconds = [r["train_seconds"] / steps for seed in (s for n, s in jobs if n == name)
                   for r in epoch_records(out / f"{name}_seed{seed}") if "train_seconds" in r]
        if seconds:
            median = float(np.median(seconds))
            result[name] = {"seconds_per_step": median, "events_per_second": model.batch_size / median,
                            "batch_size": model.batch_size}
    return result


def summarize(rows: list[dict], baseline: dict | None) -> str:
    """Markdown table: per model and budget, angle 68% and entry-point 68% per seed and their mean."""
    lines = ["| model | budget | epochs saved (per seed) | angle 68% [deg] per seed | mean | entry 68% [m] per seed "
             "| mean |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        for budget in sorted({r["budget_min"] for r in rows}):
            sel = [r for r in rows if r["model"] == name and r["budget_min"] == budget]
            angles = [r["metrics"]["angle_q68_deg"] for r in sel if "metrics" in r]
            pos = [r["metrics"]["position_q68_m"] for r in sel if "metrics" in r]
            epochs = ", ".join(str(r["epochs_saved"]) for r in sel)
            lines.append(f"| {BUDGET_MODELS[name].label} | {budget:g} min | {epochs} | {_values(angles)} | "
                         f"{_mean(angles)} | {_values(pos)} | {_mean(pos)} |")
    if baseline is not None:
        lines.append(f"| principal axis (q^4), no training | - | - | {baseline['angle_q68_deg']:.2f} | "
                     f"{baseline['angle_q68_deg']:.2f} | {baseline['position_q68_m']:.2f} | "
                     f"{baseline['position_q68_m']:.2f} |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, axes, path: Path, *, xlabels: Sequence[str], labels: Sequence[str], legend_size: int) -> None:
    """Log y axes with a grid, each axis's x and y label; legend on the first; save."""
    for ax, xlabel, label in zip(axes, xlabels, labels, strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def plot(rows: list[dict], baseline: dict | None, path: Path) -> None:
    """Angle 68% and entry-point 68% against budget: one marker per seed, a line through the seed means."""
    fig, axes = _pyplot().subplots(1, 2, figsize=(10, 4))
    for ax, key in ((axes[0], "angle_q68_deg"), (axes[1], "position_q68_m")):
        for name in dict.fromkeys(r["model"] for r in rows):
            sel = [r for r in rows if r["model"] == name and "metrics" in r]
            if not sel:
                continue
            xs = sorted({r["budget_min"] for r in sel})
            means = [np.mean([r["metrics"][key] for r in sel if r["budget_min"] == x]) for x in xs]
            line, = ax.plot(xs, means, "-", label=BUDGET_MODELS[name].label)
            ax.plot([r["budget_min"] for r in sel], [r["metrics"][key] for r in sel], "o", color=line.get_color(),
                    alpha=0.6)
        if baseline is not None:
            ax.axhline(baseline[key], color="grey", ls="--", label="principal axis (q^4)")
    _finish(fig, axes, path, xlabels=["training budget [min of CPU wall-clock, 1 thread]"] * 2,
            labels=("angle 68% [deg]", "entry point 68% [m]"), legend_size=8)


def plot_curves(out: Path, jobs: list[tuple[str, int]], path: Path, steps_per_epoch: int | None = None) -> None:
    """Training and validation loss of every run against its wall-clock minutes, and the validation loss against
    the training events seen (which separates learning per event from speed)."""
    fig, axes = _pyplot().subplots(1, 3, figsize=(15, 4), sharey=True)
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(n for n, _ in jobs))}
    for name, seed in jobs:
        model = BUDGET_MODELS[name]
        records = epoch_records(out / f"{name}_seed{seed}")
        minutes = [r["minutes"] for r in records]
        events = [(r["epoch"] + 1) * (steps_per_epoch or model.steps_per_epoch) * model.batch_size for r in records]
        style = dict(ls="-" if seed == jobs[0][1] else "--", color=colors[name], label=f"{model.label}, seed {seed}")
        axes[0].plot(minutes, [r.get("train_loss", np.nan) for r in records], **style)
        axes[1].plot(minutes, [r["val_loss"] for r in records], **style)
        axes[2].plot(events, [r["val_loss"] for r in records], **style)
    axes[2].set_xscale("log")
    _finish(fig, axes, path, xlabels=["wall-clock minutes (1 thread)"] * 2 + ["training events seen"],
            labels=("training loss (epoch mean)", "validation loss", "validation loss"), legend_size=7)


def run_study(*, train: list[str], val: list[str], test: list[str], models: Sequence[str], seeds: Sequence[int],
              minutes: float, budgets: Sequence[float], out: Path, parallel: int = 2, skip_training: bool = False,
              steps_per_epoch: int | None = None) -> dict:
    """Train (unless ``skip_training``), evaluate and write ``budget.json``, ``budget.md`` and ``budget.png``."""
    from evaluation.track_baseline import evaluate_baseline

    out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, seed) for seed in seeds for name in models]
    if not skip_training:
        train_runs(jobs, out=out, files={"train": train, "val": val}, minutes=minutes, parallel=parallel,
                   steps_per_epoch=steps_per_epoch)
    rows = evaluate_runs(jobs, out=out, test=test, budgets=budgets, parallel=parallel)
    baseline = evaluate_baseline(test)
    speed = step_times(out, jobs, steps_per_epoch)
    result = {"minutes": minutes, "budgets": list(budgets), "seeds": list(seeds), "rows": rows, "baseline": baseline,
              "step_times": speed, "test_files": test, "train_files": train, "val_files": val}
    (out / "budget.json").write_text(json.dumps(result, indent=1, default=str))
    table = summarize(rows, baseline)
    speeds = "\n".join(f"- {BUDGET_MODELS[n].label}: {s['seconds_per_step']:.3f} s per training step of "
                       f"{s['batch_size']} events, {s['events_per_second']:.1f} events/s" for n, s in speed.items())
    (out / "budget.md").write_text(table + "\n\n" + speeds + "\n")
    plot(rows, baseline, out / "budget.png")
    plot_curves(out, jobs, out / "budget_curves.png", steps_per_epoch)
    print(table, speeds, sep="\n\n")
    print(f"wrote {out / 'budget.json'}, {out / 'budget.md'}, {out / 'budget.png'}, {out / 'budget_curves.png'}")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--val", nargs="+", required=True)
    parser.add_argument("--test", nargs="+", required=True)
    parser.add_argument("--models", nargs="+", default=list(BUDGET_MODELS), choices=list(BUDGET_MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock training time per run")
    parser.add_argument("--budgets", nargs="+", type=float, default=[10.0, 20.0, 30.0])
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side (one torch thread each)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="override every model's epoch length (default: ~2-minute epochs, BUDGET_MODELS)")
    parser.add_argument("--skip-training", action="store_true", help="only evaluate the runs already in --out")
    args = parser.parse_args(argv)
    missing = [f for f in (*args.train, *args.val, *args.test) if not Path(f).is_file()]
    if missing:
        sys.exit(f"error: input file not found: {missing[0]}")
    if max(args.budgets) > args.minutes:
        sys.exit(f"error: --budgets {max(args.budgets):g} exceeds --minutes {args.minutes:g}")
    run_study(train=args.train, val=args.val, test=args.test, models=args.models, seeds=args.seeds,
              minutes=args.minutes, budgets=args.budgets, out=args.out, parallel=args.parallel,
              skip_training=args.skip_training, steps_per_epoch=args.steps_per_epoch)


if __name__ == "__main__":
    main()
