"""Scaling benchmark: dense ParT vs DSA-ParT (indexer mode) forward time and peak memory over N particles.

Each (model, N) point runs in its own subprocess so its peak RSS (``ru_maxrss``) minus the RSS before the first
forward is that point's peak memory; torch allocations are invisible to tracemalloc. Not a test: run it by hand,
    .venv/bin/python profiling/bench_dsa.py --sizes 128 256 512 1024 2048 4096 8192 --dense-max 4096
``--accuracy-train/--accuracy-test`` instead trains dense ParT and DSA-ParT with the real weaver CLI on the same
files with the same budget and reports test accuracy of each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchConfig:
    """Model sizes of the benchmark (small embeddings so dense fits at moderate N on a CPU)."""

    embed_dim: int = 32
    pair_dims: tuple[int, ...] = (16, 16)
    num_heads: int = 2
    num_layers: int = 2
    topk: int = 32
    indexer_heads: int = 2
    indexer_dim: int = 16
    batch: int = 1
    repeats: int = 3
    threads: int = 1  # 2 threads on an oversubscribed 2-core machine make OpenMP spin: timings explode


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_point(model_kind: str, n: int, cfg: BenchConfig) -> dict[str, float]:
    """Forward time (median of repeats, after one warm-up) and peak RSS increase of one model at N particles."""
    import torch

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from weaver_ext.dsa import DSAConfig, DSAParticleTransformer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    opts = dict(input_dim=7, num_classes=10, embed_dims=(cfg.embed_dim, cfg.embed_dim), pair_embed_dims=cfg.pair_dims,
                num_heads=cfg.num_heads, num_layers=cfg.num_layers, num_cls_layers=1, trim=False)
    if model_kind == "dsa":
        opts.update(dsa_enabled=True, dsa_mode="indexer", topk=cfg.topk, indexer_heads=cfg.indexer_heads,
                    indexer_dim=cfg.indexer_dim)
    elif model_kind != "dense":
        raise ValueError(f"model kind {model_kind!r}; valid kinds are 'dense', 'dsa'")
    model = DSAParticleTransformer(DSAConfig(**opts)).eval()
    x = torch.randn(cfg.batch, 7, n)
    p = torch.randn(cfg.batch, 3, n) * 20
    v = torch.cat((p, (p.square().sum(1, keepdim=True) + 0.1).sqrt()), dim=1)
    mask = torch.ones(cfg.batch, 1, n)
    base = _rss_bytes()
    times = []
    with torch.inference_mode():
        for _ in range(cfg.repeats + 1):
            start = time.perf_counter()
            model(x, v, mask)
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = sorted(times[1:])
    return {"time_s": times[len(times) // 2], "peak_mb": max(peak, 0) / 2**20}


def run_point(model_kind: str, n: int, cfg: BenchConfig, *, timeout: float) -> dict[str, float] | str:
    """``measure_point`` in a fresh subprocess; a string says why it gave no result (OOM, timeout)."""
    cmd = [sys.executable, __file__, "--point", model_kind, str(n), "--config", json.dumps(asdict(cfg))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout > {timeout:.0f} s"
    if proc.returncode != 0:
        return "killed (OOM?)" if proc.returncode < 0 else f"failed: {proc.stderr.strip().splitlines()[-1]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark(sizes: list[int], cfg: BenchConfig, *, dense_max: int, timeout: float) -> list[dict[str, object]]:
    """All points; dense is skipped above ``dense_max`` particles."""
    from tqdm import tqdm

    rows = []
    for n in tqdm(sizes, desc="N"):
        dsa = run_point("dsa", n, cfg, timeout=timeout)
        dense = run_point("dense", n, cfg, timeout=timeout) if n <= dense_max else f"skipped (N > {dense_max})"
        rows.append({"n": n, "dsa": dsa, "dense": dense})
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    """Markdown table with ratios dense/DSA and DSA time relative to the N=1024 point."""
    ref = next((r["dsa"]["time_s"] for r in rows if r["n"] == 1024 and isinstance(r["dsa"], dict)), None)
    lines = ["| N | dense time [s] | DSA time [s] | dense/DSA time | dense peak [MB] | DSA peak [MB] |"
             " dense/DSA mem | DSA t(N)/t(1024) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, s = r["dense"], r["dsa"]
        dt = f"{d['time_s']:.4f}" if isinstance(d, dict) else str(d)
        dm = f"{d['peak_mb']:.0f}" if isinstance(d, dict) else "-"
        st = f"{s['time_s']:.4f}" if isinstance(s, dict) else str(s)
        sm = f"{s['peak_mb']:.0f}" if isinstance(s, dict) else "-"
        both = isinstance(d, dict) and isinstance(s, dict)
        tr = f"{d['time_s'] / s['time_s']:.2f}" if both else "-"
        mr = f"{d['peak_mb'] / max(s['peak_mb'], 1e-3):.1f}" if both else "-"
        rel = f"{s['time_s'] / ref:.2f}" if ref and isinstance(s, dict) else "-"
        lines.append(f"| {r['n']} | {dt} | {st} | {tr} | {dm} | {sm} | {mr} | {rel} |")
    return "\n".join(lines)


ACCURACY_OPTS = {"num_layers": "2", "num_cls_layers": "1", "embed_dims": "(32,32)", "pair_embed_dims": "(16,16)",
                 "num_heads": "4"}


def accuracy_variants(kept: float, warmup_steps: int) -> dict[str, dict[str, str]]:
    """The compared models: dense ParT and DSA-ParT keeping ``kept`` of the keys (faithful topk and indexer modes;
    the indexer also with a warm-up that starts dense and reaches ``kept`` after ``warmup_steps`` training steps)."""
    sparse = {"dsa_enabled": "True", "sparsity_ratio": repr(kept)}
    indexer = {**sparse, "dsa_mode": "'indexer'"}
    warmup = {**indexer, "sparsity_ratio": "1.0", "target_sparsity": repr(kept), "sparsity_schedule": "'linear'",
              "sparsity_steps": str(warmup_steps)}
    return {"dense": {}, f"dsa_topk_{kept:g}": sparse, f"dsa_indexer_{kept:g}": indexer,
            f"dsa_indexer_warmup_{kept:g}": warmup}


def train_and_score(run: Path, options: dict[str, str], *, train: list[str], test: list[str], epochs: int,
                    data_config: Path, labels: list[str]) -> float:
    """Train with the real weaver CLI, predict the test files with the best epoch, return the test accuracy."""
    import os

    import numpy as np
    import uproot

    weaver = str(Path(sys.executable).with_name("weaver"))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    run.mkdir(parents=True, exist_ok=True)
    opts = [a for k, v in {**ACCURACY_OPTS, **options}.items() for a in ("-o", k, v)]
    common = ["--data-config", str(data_config), "--network-config", str(REPO_ROOT / "networks" / "dsa_part.py"),
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
    from weaver.utils.dataset import DataConfig

    labels = list(DataConfig.load(str(data_config), load_observers=False).label_value)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--dense-max", type=int, default=4096, help="skip dense ParT above this N")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per point")
    parser.add_argument("--topk", type=int, default=BenchConfig.topk)
    parser.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    parser.add_argument("--threads", type=int, default=BenchConfig.threads)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    parser.add_argument("--accuracy-train", nargs="+", default=None, help="ROOT files: run the accuracy comparison")
    parser.add_argument("--accuracy-test", nargs="+", default=None)
    parser.add_argument("--accuracy-epochs", type=int, default=5)
    parser.add_argument("--accuracy-kept", type=float, default=0.25)
    parser.add_argument("--accuracy-warmup-steps", type=int, default=150,
                        help="steps from dense to the kept fraction for the indexer warm-up variant")
    parser.add_argument("--accuracy-only", nargs="+", default=None, help="run only these variants")
    parser.add_argument("--accuracy-repeats", type=int, default=1, help="independent runs per model (-o seed 1000+r)")
    parser.add_argument("--accuracy-dir", type=Path, default=Path("dsa_accuracy_runs"))
    parser.add_argument("--data-config", type=Path, default=REPO_ROOT / "data" / "JetClass" / "JetClass_kin.yaml")
    parser.add_argument("--point", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        cfg = BenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.config).items()})
        print(json.dumps(measure_point(args.point[0], int(args.point[1]), cfg)))
        return
    if args.accuracy_train:
        if not args.accuracy_test:
            parser.error("--accuracy-train needs --accuracy-test")
        acc = accuracy_comparison(args.accuracy_train, args.accuracy_test, workdir=args.accuracy_dir.resolve(),
                                  epochs=args.accuracy_epochs, kept=args.accuracy_kept, data_config=args.data_config,
                                  repeats=args.accuracy_repeats, warmup_steps=args.accuracy_warmup_steps,
                                  only=args.accuracy_only)
        print(json.dumps(acc, indent=1))
        n_test = sum(uproot_entries(f) for f in args.accuracy_test)
        print(format_accuracy(acc, n_test))
        return
    cfg = BenchConfig(topk=args.topk, repeats=args.repeats, threads=args.threads)
    print(f"config: {cfg}")
    rows = benchmark(args.sizes, cfg, dense_max=args.dense_max, timeout=args.timeout)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"config": asdict(cfg), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
