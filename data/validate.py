"""Validation plots and a Markdown summary of generated JetClass-format samples.

``python -m data.validate DIR [--out OUTDIR]`` reads every ``*.root`` file in DIR, groups jets by their one-hot
label and writes per-observable PNGs (all classes overlaid) plus ``summary.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np

from data.rootio import LABELS, read_jets

# Soft-drop mass windows (GeV) around each class's resonance; None where the jet has no visible mass peak
# (QCD, and the semi-leptonic classes whose neutrino escapes). The same windows are used by the tests.
MASS_WINDOWS: dict[str, tuple[float, float] | None] = {
    "QCD": None,
    "Hbb": (100.0, 145.0),
    "Hcc": (100.0, 145.0),
    "Hgg": (100.0, 145.0),
    "H4q": (100.0, 145.0),
    "Hqql": None,
    "Zqq": (75.0, 105.0),
    "Wqq": (65.0, 95.0),
    "Tbqq": (140.0, 200.0),
    "Tbl": None,
}

PARTICLE_TYPES = ("ChargedHadron", "NeutralHadron", "Photon", "Electron", "Muon")

_BRANCHES = [
    "jet_pt", "jet_sdmass", "jet_nparticles", "jet_tau2", "jet_tau3", "part_d0val", "part_d0err",
    *[f"part_is{t}" for t in PARTICLE_TYPES], *[f"label_{n}" for n in LABELS],
]  # fmt: skip

# Statistics of real JetClass test jets (Pythia 8 + Delphes, CMS card), as measured in issue 14 (multiplicity
# mean and 10th/90th percentiles, Tbqq particle-type fractions, ParticleNet rates: highest score = true class,
# published ParticleNet_{kin,full}.pt; the same rates are in ../shared/README.md). None: not measured.
REFERENCE: dict[str, dict[str, float | None]] = {
    "Hbb": {"n_mean": 41.5, "n_p10": 28, "n_p90": 57, "pnet_kin": 0.55, "pnet_full": None},
    "Tbqq": {
        "n_mean": 49.1, "n_p10": 33, "n_p90": 65, "pnet_kin": 0.86, "pnet_full": 0.94,
        "frac_ChargedHadron": 0.463, "frac_NeutralHadron": 0.114, "frac_Photon": 0.408,
        "frac_Electron": 0.008, "frac_Muon": 0.007,
    },
    "Tbl": {"n_mean": 27.4, "n_p10": 16, "n_p90": 40, "pnet_kin": 0.93, "pnet_full": 0.98},
}  # fmt: skip


@dataclass
class ClassSample:
    """Per-class observables of one sample (numpy arrays; d0sig holds all tracks of all jets)."""

    name: str
    pt: np.ndarray
    sdmass: np.ndarray
    nparticles: np.ndarray
    tau32: np.ndarray
    d0sig: np.ndarray
    jet_max_d0sig: np.ndarray  # per jet: 2nd largest |d0|/sigma of tracks with |d0| < 2 mm (0 if < 2 such)
    type_counts: dict[str, int] = field(default_factory=dict)  # particles of each PARTICLE_TYPES flag, all jets

    def type_fraction(self, kind: str) -> float:
        """Fraction of all particles of all jets that carry the flag ``part_is<kind>``."""
        total = sum(self.type_counts.values())
        return self.type_counts.get(kind, 0) / total if total else float("nan")


def tau32(tau2: np.ndarray, tau3: np.ndarray) -> np.ndarray:
    """tau3/tau2, 0 where tau2 is 0."""
    return np.divide(tau3, tau2, out=np.zeros_like(tau3, dtype=np.float64), where=tau2 > 0)


# b-tagging-style track selection: |d0| below 2 mm rejects most K0S/Lambda daughters
IP_TAG_D0_MAX = 2.0


def second_largest_d0sig(d0: ak.Array, d0err: ak.Array) -> np.ndarray:
    """Per jet: the second-largest |d0|/sigma(d0) of tracks with |d0| < 2 mm (a simple b-tag discriminant)."""
    sig = abs(d0) / ak.where(d0err > 0, d0err, np.inf)
    sig = sig[(d0err > 0) & (abs(d0) < IP_TAG_D0_MAX)]
    top2 = ak.sort(sig, axis=1, ascending=False)[:, :2]
    return ak.to_numpy(ak.fill_none(ak.pad_none(top2, 2, axis=1)[:, 1], 0.0)).astype(np.float64)


def load_samples(paths: Sequence[str | Path]) -> dict[str, ClassSample]:
    """Read files and split them per class (classes without jets are left out)."""
    arr = read_jets(paths, _BRANCHES)
    out: dict[str, ClassSample] = {}
    for name in LABELS:
        sel = arr[arr[f"label_{name}"]]
        if len(sel) == 0:
            continue
        d0, d0err = sel["part_d0val"], sel["part_d0err"]
        charged = d0err > 0
        out[name] = ClassSample(
            name=name,
            pt=ak.to_numpy(sel["jet_pt"]).astype(np.float64),
            sdmass=ak.to_numpy(sel["jet_sdmass"]).astype(np.float64),
            nparticles=ak.to_numpy(sel["jet_nparticles"]).astype(np.float64),
            tau32=tau32(ak.to_numpy(sel["jet_tau2"]), ak.to_numpy(sel["jet_tau3"])),
            d0sig=ak.to_numpy(ak.flatten(d0[charged] / d0err[charged])).astype(np.float64),
            jet_max_d0sig=second_largest_d0sig(d0, d0err),
            type_counts={t: int(ak.sum(sel[f"part_is{t}"])) for t in PARTICLE_TYPES},
        )
    return out


def fraction_in(x: np.ndarray, window: tuple[float, float] | None) -> float:
    """Fraction of entries inside [lo, hi); NaN without a window or without entries."""
    if window is None or len(x) == 0:
        return float("nan")
    return float(np.mean((x >= window[0]) & (x < window[1])))


def _fmt2(x: float) -> str:
    """Two decimals, '-' for NaN (no mass window or no QCD sample)."""
    return "-" if np.isnan(x) else f"{x:.2f}"


def summary_table(samples: dict[str, ClassSample]) -> str:
    """Markdown table: counts, means/medians and the fraction of jets in the class's mass window."""
    head = (
        "| class | jets | mean pT | median m_SD | mean m_SD | window (GeV) | frac in window | QCD frac in window "
        "| mean n_part | median tau32 | median 2nd |d0|/sigma |\n"
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n"
    )
    qcd = samples.get("QCD")
    rows = []
    for name, s in samples.items():
        win = MASS_WINDOWS[name]
        qcd_frac = fraction_in(qcd.sdmass, win) if qcd is not None else float("nan")
        rows.append(
            f"| {name} | {len(s.pt)} | {s.pt.mean():.0f} | {np.median(s.sdmass):.1f} | {s.sdmass.mean():.1f} "
            f"| {'-' if win is None else f'{win[0]:.0f}-{win[1]:.0f}'} | {_fmt2(fraction_in(s.sdmass, win))} "
            f"| {_fmt2(qcd_frac)} | {s.nparticles.mean():.1f} | {np.median(s.tau32):.2f} "
            f"| {np.median(s.jet_max_d0sig):.2f} |"
        )
    return head + "\n".join(rows) + "\n"


def reference_rows(samples: dict[str, ClassSample]) -> list[tuple[str, str, float, float]]:
    """(class, statistic, real JetClass, generated) for every REFERENCE statistic a sample can give."""
    rows = []
    for name, ref in REFERENCE.items():
        s = samples.get(name)
        if s is None:
            continue
        gen = {
            "n_mean": float(s.nparticles.mean()),
            "n_p10": float(np.percentile(s.nparticles, 10)),
            "n_p90": float(np.percentile(s.nparticles, 90)),
            **{f"frac_{t}": s.type_fraction(t) for t in PARTICLE_TYPES},
        }
        rows.extend((name, key, float(real), gen[key]) for key, real in ref.items() if real is not None and key in gen)
    return rows


def reference_table(samples: dict[str, ClassSample]) -> str:
    """Markdown table: generated statistics against real JetClass (REFERENCE), ratio and difference."""
    head = (
        "| class | statistic | real JetClass | generated | ratio gen/real | gen - real |\n"
        "|---|---|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {name} | {key} | {real:.3f} | {gen:.3f} | {gen / real:.3f} | {gen - real:+.3f} |"
        for name, key, real, gen in reference_rows(samples)
    ]
    if not lines:
        return "No class with real-JetClass reference statistics (Hbb, Tbqq, Tbl) in this sample.\n"
    return head + "\n".join(lines) + "\n"


def make_plots(samples: dict[str, ClassSample], out_dir: Path) -> list[Path]:
    """One PNG per observable, all classes overlaid as normalised step histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [
        ("sdmass", "soft-drop mass [GeV]", np.linspace(0, 250, 51), False, lambda s: s.sdmass),
        ("nparticles", "number of particles", np.linspace(0, 150, 51), False, lambda s: s.nparticles),
        ("jet_pt", "jet pT [GeV]", np.linspace(450, 1050, 41), False, lambda s: s.pt),
        ("tau32", "tau3/tau2", np.linspace(0, 1.2, 49), False, lambda s: s.tau32),
        ("d0sig", "track d0 / sigma(d0)", np.linspace(-30, 30, 61), True, lambda s: np.clip(s.d0sig, -29.9, 29.9)),
        ("jet_d0sig2", "2nd largest track |d0|/sigma (|d0|<2 mm) per jet", np.linspace(0, 50, 51), True,
         lambda s: np.clip(s.jet_max_d0sig, 0, 49.9)),
    ]  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, xlabel, bins, logy, get in specs:
        fig, ax = plt.subplots(figsize=(7, 5))
        for name, s in samples.items():
            x = get(s)
            if len(x):
                ax.hist(x, bins=bins, histtype="step", density=True, label=f"{name} ({len(s.pt)})", linewidth=1.4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("normalised")
        if logy:
            ax.set_yscale("log")
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def validate(in_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write plots and ``summary.md`` for the ROOT files in ``in_dir``; returns the summary path."""
    in_dir = Path(in_dir)
    files = sorted(in_dir.glob("*.root"))
    if not files:
        raise ValueError(f"no .root files in {in_dir}")
    out = Path(out_dir) if out_dir is not None else in_dir / "validation"
    samples = load_samples(files)
    plots = make_plots(samples, out)
    text = (
        f"# Validation of {len(files)} file(s) in `{in_dir}`\n\n"
        + summary_table(samples)
        + "\n## Against real JetClass (`data.validate.REFERENCE`)\n\n"
        + reference_table(samples)
        + "\nPlots: "
        + ", ".join(f"`{p.name}`" for p in plots)
        + "\n"
    )
    summary = out / "summary.md"
    summary.write_text(text)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m data.validate", description=__doc__.splitlines()[0])
    ap.add_argument("dir", help="directory with generated .root files")
    ap.add_argument("--out", default=None, help="output directory (default: DIR/validation)")
    args = ap.parse_args(argv)
    try:
        summary = validate(args.dir, args.out)
    except ValueError as err:
        ap.error(str(err))
    print(summary.read_text())
    print(f"wrote {summary.parent}")


if __name__ == "__main__":
    main()
