"""One efficiency table across profiling runs: ``python -m profiling.compare RUN_DIR [RUN_DIR ...]``.

Each RUN_DIR is the ``--out`` directory of ``python -m profiling.forward`` (holding ``report.json``). Physics
metrics are added when the run dir holds a ``metrics.json`` from ``python -m evaluation.metrics`` (or one is given
with ``--metrics RUN_DIR=PATH``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.metrics import rejection_text

__all__ = ["HEADERS", "load_run", "main", "table"]

HEADERS = ["run", "model", "params", "MMAC/jet", "batch", "latency [ms]", "jets/s", "peak RSS [MiB]",
           "accuracy", "macro AUC", "1/eB Tbqq", "1/eB Hbb"]


def load_run(run_dir: str | Path, metrics_path: str | Path | None = None) -> dict[str, Any]:
    """Collect the comparable numbers of one run (largest-throughput batch) and optional physics metrics."""
    run = Path(run_dir)
    rep_path = run / "report.json"
    if not rep_path.is_file():
        raise FileNotFoundError(f"{run}: no report.json (is it a profiling.forward --out directory?)")
    rep = json.loads(rep_path.read_text())
    best = max(rep["latency_vs_batch"], key=lambda r: r["jets_per_s"])
    mem = rep["memory"].get("cuda", {}).get("max_allocated_mb") or rep["memory"]["cpu_peak_rss_mb"]
    row: dict[str, Any] = {
        "run": run.name,
        "model": rep["model"]["model_class"],
        "params": rep["model"]["params"],
        "macs_per_jet": rep["flops"]["per_jet"]["ours_macs"],
        "batch": best["batch_size"],
        "latency_ms": 1e3 * best["median_s"],
        "jets_per_s": best["jets_per_s"],
        "peak_memory_mb": mem,
        "device": rep["environment"]["device"],
    }
    mpath = Path(metrics_path) if metrics_path else run / "metrics.json"
    if mpath.is_file():
        m = json.loads(mpath.read_text())
        row.update(accuracy=m.get("accuracy"), macro_auc=m.get("macro_auc"),
                   rejection={k: v["rejection"] for k, v in m.get("rejection", {}).items()},
                   rejection_text={k: rejection_text(v) for k, v in m.get("rejection", {}).items()})
    return row


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, fmt)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the runs."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        rej = r.get("rejection_text", {})
        cells = [r["run"], r["model"], f"{r['params']:,}", _cell(r["macs_per_jet"] / 1e6, ".1f"), str(r["batch"]),
                 _cell(r["latency_ms"], ".2f"), _cell(r["jets_per_s"], ".1f"), _cell(r["peak_memory_mb"], ".0f"),
                 _cell(r.get("accuracy"), ".4f"), _cell(r.get("macro_auc"), ".4f"),
                 _cell(rej.get("Tbqq"), ""), _cell(rej.get("Hbb"), "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m profiling.compare", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--metrics", action="append", default=[], metavar="RUN_DIR=PATH",
                   help="metrics.json for a run that does not hold one")
    p.add_argument("--out", help="also write the table (Markdown) and rows (JSON) with this path prefix")
    args = p.parse_args(argv)
    try:
        extra = {}
        for item in args.metrics:
            if "=" not in item:
                raise ValueError(f"--metrics expects RUN_DIR=PATH, got {item!r}")
            k, v = item.split("=", 1)
            extra[Path(k).resolve()] = v
        rows = [load_run(r, extra.get(Path(r).resolve())) for r in args.runs]
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = table(rows)
    if args.out:
        Path(args.out + ".md").write_text(text + "\n")
        Path(args.out + ".json").write_text(json.dumps(rows, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
