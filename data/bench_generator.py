"""Benchmark: bare Pythia + FastJet loop vs the full generator path on the same events (not a test).

``python -m data.bench_generator [--class QCD] [--rounds 6] [--events 48]``. Two Pythia instances share one seed,
so both paths see identical events. Rounds alternate bare / full so that load changes on a shared machine hit
both alike. The bare loop generates a batch of events, keeps final-state visible particles, clusters anti-kT
R=0.8 and selects jets in the window. The full path adds the detector model, truth matching, soft drop,
N-subjettiness, impact parameters, and writes the ROOT file. Prints jets/s of both and their ratio, per wall
second and per CPU second of this process (the latter is robust when other jobs share the cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import fastjet as fj
import numpy as np

from data.pythia_jets import (
    CLASS_SPECS,
    JetGenerator,
    JetSelection,
    batch_from_awkward,
    concat_blocks,
    derive_seed,
    make_pythia,
    momentum_lists,
)
from data.rootio import write_jet_file


@dataclass
class BenchResult:
    """Jets, wall seconds and CPU seconds accumulated by each path."""

    bare_jets: int = 0
    bare_seconds: float = 0.0
    bare_cpu: float = 0.0
    full_jets: int = 0
    full_seconds: float = 0.0
    full_cpu: float = 0.0

    @property
    def bare_rate(self) -> float:
        return self.bare_jets / self.bare_seconds

    @property
    def full_rate(self) -> float:
        return self.full_jets / self.full_seconds

    @property
    def bare_cpu_rate(self) -> float:
        return self.bare_jets / self.bare_cpu

    @property
    def full_cpu_rate(self) -> float:
        return self.full_jets / self.full_cpu


def bare_round(pythia, n_events: int, sel: JetSelection) -> int:
    """Generate ``n_events`` events, cluster visible final-state particles, count jets in the window.

    Uses the same fast flattening as the generator, so that the ratio measures only what the full path adds.
    """
    batch = batch_from_awkward(pythia.nextBatch(n_events))
    visible = (batch.status > 0) & ~np.isin(np.abs(batch.pid), (12, 14, 16))
    event = np.repeat(np.arange(batch.n_events), np.diff(batch.offsets))[visible]
    vec = momentum_lists(
        batch.px[visible], batch.py[visible], batch.pz[visible], batch.e[visible],
        np.bincount(event, minlength=batch.n_events),
    )  # fmt: skip
    jets = fj.ClusterSequence(vec, fj.JetDefinition(fj.antikt_algorithm, sel.radius)).inclusive_jets(sel.pt_min)
    px, py, pz = (ak.to_numpy(ak.flatten(jets[c])) for c in ("px", "py", "pz"))
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-12))
    return int(np.sum((pt > sel.pt_min) & (pt < sel.pt_max) & (np.abs(eta) < sel.eta_max)))


def run_bench(class_name: str, *, rounds: int, events: int, seed: int) -> BenchResult:
    """Alternate bare and full rounds over the same event stream; returns accumulated jets and times."""
    if class_name not in CLASS_SPECS:
        raise ValueError(f"unknown class {class_name!r}; valid: {', '.join(CLASS_SPECS)}")
    if rounds <= 0 or events <= 0:
        raise ValueError(f"rounds and events must be positive, got {rounds}, {events}")
    spec = CLASS_SPECS[class_name]
    sel = JetSelection()
    full = JetGenerator(spec, seed, selection=sel)
    # the same settings and seed as the generator's (first) Pythia instance: identical events
    bare = make_pythia(spec.settings, derive_seed(seed, "pythia", 0), sel)
    # one untimed round each: first-call costs (fastjet banner, lazy imports, caches) stay out of the numbers
    bare_round(bare, 8, sel)
    full.process(full.next_events(8))
    res = BenchResult()
    blocks = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            res.bare_jets += bare_round(bare, events, sel)
            res.bare_seconds += time.perf_counter() - t0
            res.bare_cpu += time.process_time() - c0

            t0, c0 = time.perf_counter(), time.process_time()
            block = full.process(full.next_events(events))
            if len(block):
                blocks.append(block)
            res.full_jets += len(block)
            res.full_seconds += time.perf_counter() - t0
            res.full_cpu += time.process_time() - c0
        # the generator writes each file once: so does the benchmark, and the write counts for the full path
        t0, c0 = time.perf_counter(), time.process_time()
        if blocks:
            write_jet_file(Path(tmp) / "bench.root", concat_blocks(blocks), class_name)
        res.full_seconds += time.perf_counter() - t0
        res.full_cpu += time.process_time() - c0
    return res


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m data.bench_generator", description=__doc__.splitlines()[0])
    ap.add_argument("--class", dest="class_name", default="QCD", help=f"one of {','.join(CLASS_SPECS)}")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--events", type=int, default=48, help="events per round and path")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)
    try:
        res = run_bench(args.class_name, rounds=args.rounds, events=args.events, seed=args.seed)
    except ValueError as err:
        ap.error(str(err))
    n_ev = args.rounds * args.events
    print(f"class {args.class_name}: {n_ev} events per path, {args.rounds} alternating rounds")
    print(f"{'path':22s} {'jets':>6s} {'wall s':>8s} {'jets/s':>8s} {'CPU s':>8s} {'jets/CPU-s':>11s}")
    for label, jets, wall, cpu in (
        ("bare Pythia+FastJet", res.bare_jets, res.bare_seconds, res.bare_cpu),
        ("full generator path", res.full_jets, res.full_seconds, res.full_cpu),
    ):
        print(f"{label:22s} {jets:6d} {wall:8.2f} {jets / wall:8.1f} {cpu:8.2f} {jets / cpu:11.1f}")
    print(
        f"ratio full/bare: {res.full_rate / res.bare_rate:.3f} (wall jets/s), "
        f"{res.full_cpu_rate / res.bare_cpu_rate:.3f} (jets per CPU-second); target >= 0.8"
    )
    print(
        f"same events, CPU time bare/full: {res.bare_cpu / res.full_cpu:.3f} "
        "(differs from the jets/s ratio where truth matching drops unmatched jets: signal classes)"
    )


if __name__ == "__main__":
    main()
