"""How often the published JetClass ParticleNet's highest score is the true class, on generated jets.

``python -m profiling.tagger_rates --out DIR [--jets-per-class 300] [--seed 7] [--jets DIR]`` generates (or reads,
with ``--jets``) JetClass-layout files, runs the real ``weaver --predict`` with ``networks/particlenet.py`` and
the published ``ParticleNet_{kin,full}.pt`` of ``../shared/reference/particle_transformer``, and prints the
table of issue 14: the rate per class for kin and full inputs beside the rates measured on real JetClass jets
(``data.validate.REFERENCE``), the issue's targets and whether each is met.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.validate import REFERENCE
from evaluation.metrics import read_predictions
from profiling.loading import weaver_exe

__all__ = ["DEFAULT_CLASSES", "FULL_NOT_WORSE", "FULL_SLACK", "RATE_TOLERANCE", "VARIANTS", "Rates", "collect_files",
           "main", "rate_table", "rates_from_prediction", "run_predict", "target_lines"]

REPO = Path(__file__).resolve().parents[1]
SHARED_PT = REPO.parent / "shared" / "reference" / "particle_transformer"
NETWORK = REPO / "networks" / "particlenet.py"
VARIANTS = ("kin", "full")
DEFAULT_CLASSES = "QCD,Hbb,Wqq,Zqq,Tbqq,Tbl"
# issue 14: |generated - real| <= RATE_TOLERANCE where the real rate is known, and full >= kin - FULL_SLACK
RATE_TOLERANCE = 0.08
FULL_SLACK = 0.02
FULL_NOT_WORSE = ("Hbb", "Tbqq", "Wqq", "Zqq")


@dataclass(frozen=True)
class Rates:
    """Per-class rate (highest score = true class), jet count and the most frequent wrong answer."""

    rate: dict[str, float]
    jets: dict[str, int]
    top_wrong: dict[str, str]


def run_predict(files: Sequence[Path], variant: str, work: Path) -> Path:
    """``weaver --predict`` with the published ParticleNet weights of ``variant``; returns the output file.

    The data config is copied into ``work`` so that nothing weaver may write lands in ../shared.
    """
    config = SHARED_PT / "data" / "JetClass" / f"JetClass_{variant}.yaml"
    weights = SHARED_PT / "models" / f"ParticleNet_{variant}.pt"
    for path in (config, weights):
        if not path.is_file():
            raise ValueError(f"missing {path} (see ../shared/README.md)")
    work.mkdir(parents=True, exist_ok=True)
    local_config = work / config.name
    shutil.copyfile(config, local_config)
    out = work / f"pred_{variant}.root"
    cmd = [
        weaver_exe(), "--predict", "--data-test", *map(str, files), "--data-config", str(local_config),
        "--network-config", str(NETWORK), "--model-prefix", str(weights), "--predict-output", str(out),
        "--gpus", "", "--num-workers", "0", "--batch-size", "256", "--log-file", str(work / f"{variant}.log"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
        raise RuntimeError(f"weaver --predict ({variant}) failed: {' '.join(tail)} (log: {work / variant}.log)")
    return out


def rates_from_prediction(path: Path) -> Rates:
    """Per-class rate from weaver's prediction file (``evaluation.metrics.read_predictions``)."""
    names, truth, scores = read_predictions(path)
    guess = scores.argmax(axis=1)
    rate, jets, wrong = {}, {}, {}
    for i, name in enumerate(names):
        sel = truth == i
        if not np.any(sel):
            continue
        jets[name] = int(sel.sum())
        rate[name] = float(np.mean(guess[sel] == i))
        bad = guess[sel][guess[sel] != i]
        wrong[name] = names[int(np.bincount(bad, minlength=len(names)).argmax())] if len(bad) else "-"
    return Rates(rate, jets, wrong)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def target_lines(measured: dict[str, Rates]) -> list[str]:
    """One line per target of issue 14 that these rates can decide, with MET / MISSED."""
    lines = []
    for variant in VARIANTS:
        for name, rate in measured[variant].rate.items():
            real = REFERENCE.get(name, {}).get(f"pnet_{variant}")
            if real is not None:
                ok = abs(rate - real) <= RATE_TOLERANCE
                lines.append(
                    f"{'MET   ' if ok else 'MISSED'} {name} {variant}: {rate:.2f} vs real {real:.2f} "
                    f"(|diff| {abs(rate - real):.2f} <= {RATE_TOLERANCE})"
                )
    for name in FULL_NOT_WORSE:
        kin, full = measured["kin"].rate.get(name), measured["full"].rate.get(name)
        if kin is not None and full is not None:
            ok = full >= kin - FULL_SLACK
            lines.append(f"{'MET   ' if ok else 'MISSED'} {name} full {full:.2f} >= kin {kin:.2f} - {FULL_SLACK}")
    return lines


def rate_table(measured: dict[str, Rates]) -> str:
    """The Markdown table of issue 14 (real rates from the reference, generated from ``measured``)."""
    head = (
        "| class | jets | real, kin | real, full | generated, kin | generated, full | top wrong (kin/full) |\n"
        "|---|---:|---|---|---|---|---|\n"
    )
    rows = []
    for name, n in measured["kin"].jets.items():
        ref = REFERENCE.get(name, {})
        rows.append(
            f"| {name} | {n} | {_fmt(ref.get('pnet_kin'))} | {_fmt(ref.get('pnet_full'))} "
            f"| {_fmt(measured['kin'].rate[name])} | {_fmt(measured['full'].rate.get(name))} "
            f"| {measured['kin'].top_wrong[name]} / {measured['full'].top_wrong.get(name, '-')} |"
        )
    return head + "\n".join(rows) + "\n"


def collect_files(args: argparse.Namespace) -> list[Path]:
    """The jets to evaluate: ``--jets DIR`` as given, else generated into OUT/jets (resumable)."""
    if args.jets:
        files = sorted(Path(args.jets).glob("*.root"))
        if not files:
            raise ValueError(f"no .root files in {args.jets}")
        return files
    from data.generate import generate_dataset

    return generate_dataset(
        classes=args.classes,
        jets_per_class=args.jets_per_class,
        jets_per_file=args.jets_per_class,
        out_dir=Path(args.out) / "jets",
        seed=args.seed,
        workers=args.workers,
        progress=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: generate (or read), predict with kin and full weights, print the table and targets."""
    ap = argparse.ArgumentParser(prog="python -m profiling.tagger_rates", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="work directory (jets/, predictions, weaver logs)")
    ap.add_argument("--jets", default=None, help="evaluate the .root files of this directory instead of generating")
    ap.add_argument("--classes", default=DEFAULT_CLASSES)
    ap.add_argument("--jets-per-class", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        files = collect_files(args)
        measured = {v: rates_from_prediction(run_predict(files, v, Path(args.out) / v)) for v in VARIANTS}
    except (ValueError, RuntimeError) as err:
        ap.error(str(err))
    print(rate_table(measured))
    print("\n".join(target_lines(measured)))


if __name__ == "__main__":
    main()
