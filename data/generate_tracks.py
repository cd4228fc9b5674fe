"""Generate muon-track events in the toy liquid-scintillator detector and write them as ROOT TTrees.

Usage: ``python -m data.generate_tracks --events 1000 --out DIR --seed 1 --workers 2``. Event ``i`` is simulated
with ``numpy.random.default_rng([seed, i])``, so the output is identical for any ``--workers`` and any split into
files. Branch layout (tree ``tree``): jagged float32 ``hit_x, hit_y, hit_z`` [m], ``hit_t`` [ns from the start of
the readout window], ``hit_q`` [photo-electrons]; float32 scalars ``track_x0, track_y0, track_z0`` (entry point
[m]), ``track_dx, track_dy, track_dz`` (unit direction), ``track_length`` [m], ``n_hits``, ``n_dark_hits``,
``total_pe``. Hits are sorted by time. See docs/tracks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
from collections.abc import Sequence
from pathlib import Path

import awkward as ak
import numpy as np
import uproot
from tqdm import tqdm

from data.tracks_detector import DetectorConfig, TrackEvent, fibonacci_sphere, simulate_event

TREE_NAME = "tree"
HIT_BRANCHES = ("hit_x", "hit_y", "hit_z", "hit_t", "hit_q")
TARGET_BRANCHES = ("track_x0", "track_y0", "track_z0", "track_dx", "track_dy", "track_dz")
EXTRA_BRANCHES = ("track_length", "n_hits", "n_dark_hits", "total_pe")


def simulate_events(
    first: int, count: int, *, seed: int, cfg: DetectorConfig, progress: bool = False
) -> list[TrackEvent]:
    """Simulate events ``first .. first+count-1``; event i uses the generator seeded by ``[seed, i]``."""
    pmts = fibonacci_sphere(cfg.n_pmts, cfg.pmt_sphere_radius_m)
    indices = range(first, first + count)
    if progress:
        indices = tqdm(indices, desc=f"events {first}-{first + count - 1}", leave=False)
    return [simulate_event(np.random.default_rng([seed, i]), pmts, cfg) for i in indices]


def events_to_arrays(events: Sequence[TrackEvent]) -> dict[str, ak.Array | np.ndarray]:
    """Columnar float32 arrays (jagged hits, scalar targets) ready for ``TTree.extend``."""
    counts = np.array([ev.hit_t.size for ev in events], dtype=np.int64)
    out: dict[str, ak.Array | np.ndarray] = {}
    for name in HIT_BRANCHES:
        flat = np.concatenate([getattr(ev, name) for ev in events]).astype(np.float32)
        out[name] = ak.unflatten(flat, counts)
    entries = np.stack([ev.entry for ev in events])
    dirs = np.stack([ev.direction for ev in events])
    for j, name in enumerate(TARGET_BRANCHES[:3]):
        out[name] = entries[:, j].astype(np.float32)
    for j, name in enumerate(TARGET_BRANCHES[3:]):
        out[name] = dirs[:, j].astype(np.float32)
    out["track_length"] = np.array([ev.track_length for ev in events], dtype=np.float32)
    out["n_hits"] = counts.astype(np.float32)
    out["n_dark_hits"] = np.array([ev.n_dark_hits for ev in events], dtype=np.float32)
    out["total_pe"] = np.array([ev.total_pe for ev in events], dtype=np.float32)
    return out


def write_tracks_root(path: Path, arrays: dict[str, ak.Array | np.ndarray]) -> Path:
    """Write the arrays as a TTree (``mktree`` + ``extend``; weaver cannot read uproot's default RNTuple)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path) as f:
        branch_types = {}
        for name in HIT_BRANCHES:
            branch_types[name] = "var * float32"
        for name in TARGET_BRANCHES + EXTRA_BRANCHES:
            branch_types[name] = np.float32
        tree = f.mktree(TREE_NAME, branch_types, counter_name=lambda _: "n_hit_counter")
        tree.extend(arrays)
    return path


def _simulate_chunk(job: tuple[int, int, int, DetectorConfig]) -> list[TrackEvent]:
    """Worker: simulate one chunk of consecutive events."""
    first, count, seed, cfg = job
    return simulate_events(first, count, seed=seed, cfg=cfg)


def generate_tracks(
    *,
    events: int,
    out_dir: str | Path,
    seed: int,
    workers: int = 1,
    events_per_file: int = 500,
    progress: bool = True,
    prefix: str = "tracks",
    config: DetectorConfig | None = None,
    chunk_size: int = 20,
    **overrides: object,
) -> list[Path]:
    """Generate ``events`` muon events into ``out_dir/{prefix}_NNNN.root``; returns the file paths in order.

    ``overrides`` are DetectorConfig fields (e.g. ``n_pmts=4000, min_hits=200``) applied on top of ``config``.
    Workers simulate chunks of ``chunk_size`` events; the parent writes each file once its events are in.
    """
    for name, value in (("events", events), ("events_per_file", events_per_file), ("workers", workers),
                        ("chunk_size", chunk_size)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    cfg = config or DetectorConfig()
    valid = {f.name for f in dataclasses.fields(DetectorConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown detector option(s) {unknown}; valid: {sorted(valid)}")
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [(first, min(events_per_file, events - first)) for first in range(0, events, events_per_file)]
    jobs = [
        (start, min(chunk_size, first + count - start), seed, cfg)
        for first, count in files
        for start in range(first, first + count, chunk_size)
    ]
    bar = tqdm(total=events, desc="muon events", unit="event", disable=not progress)
    paths: list[Path] = []
    pending: list[TrackEvent] = []
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(min(workers, len(jobs))) if workers > 1 and len(jobs) > 1 else None
    try:
        chunks = pool.imap(_simulate_chunk, jobs) if pool is not None else map(_simulate_chunk, jobs)
        for chunk in chunks:
            pending.extend(chunk)
            bar.update(len(chunk))
            if len(pending) == files[len(paths)][1]:
                path = out / f"{prefix}_{len(paths):04d}.root"
                paths.append(write_tracks_root(path, events_to_arrays(pending)))
                pending = []
    finally:
        if pool is not None:  # every result was consumed (or an error is propagating): stop the workers
            pool.terminate()
            pool.join()
        bar.close()
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: parse options, generate, print the written files."""
    defaults = DetectorConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, required=True, help="number of events")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--events-per-file", type=int, default=500)
    ap.add_argument("--prefix", default="tracks", help="file name prefix")
    ap.add_argument("--chunk-size", type=int, default=20, help="events per worker task")
    ap.add_argument("--pmts", type=int, default=defaults.n_pmts, help="number of PMTs on the sphere")
    ap.add_argument("--min-hits", type=int, default=defaults.min_hits, help="re-draw events with fewer hits")
    ap.add_argument("--photon-scale", type=float, default=defaults.photon_scale,
                    help="fraction of the real light yield that is simulated (sets the hit multiplicity)")
    ap.add_argument("--dark-rate", type=float, default=defaults.dark_rate_hz, help="dark rate per PMT [Hz]")
    ap.add_argument("--tts", type=float, default=defaults.tts_sigma_ns, help="PMT transit-time spread sigma [ns]")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        paths = _run(args)
    except (ValueError, RuntimeError) as err:
        ap.error(str(err))
    for p in paths:
        print(p)


def _run(args: argparse.Namespace) -> list[Path]:
    """Call generate_tracks with the parsed CLI options."""
    return generate_tracks(
        events=args.events,
        out_dir=args.out,
        seed=args.seed,
        workers=args.workers,
        events_per_file=args.events_per_file,
        progress=not args.no_progress,
        prefix=args.prefix,
        chunk_size=args.chunk_size,
        n_pmts=args.pmts,
        min_hits=args.min_hits,
        photon_scale=args.photon_scale,
        dark_rate_hz=args.dark_rate,
        tts_sigma_ns=args.tts,
    )


if __name__ == "__main__":
    main()
