"""Physics checks of generated jets: mass peaks, QCD falling mass, b-jet displacement, top 3-prong structure.

Sample: 120 jets each of QCD, Hbb, Zqq, Wqq, Tbqq (fixed seed). Mass windows (data.validate.MASS_WINDOWS) are
wide compared with the statistical error of a median of 120 jets (~2-3 GeV) and with the detector resolution
of the soft-drop mass (~10 GeV), and narrow enough that QCD puts only ~5-7% of its jets in each of them.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from scipy.stats import mannwhitneyu

from data.generate import generate_dataset
from data.validate import MASS_WINDOWS, ClassSample, fraction_in, load_samples

N_JETS = 120


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClassSample]:
    files = generate_dataset(
        classes="QCD,Hbb,Zqq,Wqq,Tbqq",
        jets_per_class=N_JETS,
        jets_per_file=N_JETS,
        out_dir=tmp_path_factory.mktemp("physics"),
        seed=20240,
        workers=2,
        progress=False,
    )
    return load_samples(files)


@pytest.mark.parametrize("name", ["Hbb", "Zqq", "Wqq", "Tbqq"])
def test_softdrop_mass_peaks_at_the_resonance(samples: dict[str, ClassSample], name: str) -> None:
    window = MASS_WINDOWS[name]
    assert window is not None
    mass = samples[name].sdmass
    assert len(mass) == N_JETS
    assert window[0] < np.median(mass) < window[1]
    frac = fraction_in(mass, window)
    frac_qcd = fraction_in(samples["QCD"].sdmass, window)
    # binomial sigma of a fraction of 120 jets is <= 0.046: these margins are > 5 sigma
    assert frac > 0.45
    assert frac > 4 * frac_qcd + 0.05


def test_mass_peaks_are_ordered_w_h_top(samples: dict[str, ClassSample]) -> None:
    med = {n: np.median(samples[n].sdmass) for n in ("Wqq", "Hbb", "Tbqq")}
    assert med["Wqq"] + 20 < med["Hbb"] < med["Tbqq"] - 20


def test_qcd_mass_is_falling(samples: dict[str, ClassSample]) -> None:
    counts, _ = np.histogram(samples["QCD"].sdmass, bins=[0, 50, 100, 150, 250])
    assert np.median(samples["QCD"].sdmass) < 40
    assert counts[0] > 2 * counts[1]
    # 50-100 vs 100-150 GeV: with the calorimeter model (tower merging, HCAL resolution) the QCD tail is flatter
    # there and 120 jets put only ~13 in each bin (Poisson sigma ~3.6): falling within 2 sigma, not strictly
    assert counts[1] + 2 * np.sqrt(counts[1] + counts[2]) >= counts[2]
    assert counts[0] > counts[3] + counts[2] + counts[1]


def test_hbb_jets_are_more_displaced_than_qcd(samples: dict[str, ClassSample]) -> None:
    hbb, qcd = samples["Hbb"].jet_max_d0sig, samples["QCD"].jet_max_d0sig
    assert np.median(hbb) > 5 * np.median(qcd)
    assert mannwhitneyu(hbb, qcd, alternative="greater").pvalue < 1e-10


def test_prompt_track_pulls_follow_the_stated_resolution(samples: dict[str, ClassSample]) -> None:
    """QCD tracks are mostly prompt: the median |d0|/sigma is close to 0.674 (a unit Gaussian's)."""
    pulls = np.abs(samples["QCD"].d0sig)
    assert len(pulls) > 1000
    assert 0.6 < np.median(pulls) < 0.9


def test_top_jets_are_three_prong(samples: dict[str, ClassSample]) -> None:
    top, qcd = samples["Tbqq"].tau32, samples["QCD"].tau32
    assert np.median(top) < 0.6 < np.median(qcd)
    assert mannwhitneyu(top, qcd, alternative="less").pvalue < 1e-10


def test_jet_pt_spectrum_fills_the_window(samples: dict[str, ClassSample]) -> None:
    for s in samples.values():
        assert s.pt.min() > 500 and s.pt.max() < 1000
        assert np.mean(s.pt < 600) > 0.3  # falling spectrum: many jets near the lower edge


def test_leptonic_classes_contain_leptons(jet_files: list[Path]) -> None:
    """Tbl and Hqql jets carry the W's charged lepton (e or mu; taus decay to them ~35% of the time)."""

    def lepton_fraction(stem: str) -> float:
        path = next(p for p in jet_files if p.name.startswith(stem + "_"))
        x = uproot.open(path)["tree"].arrays(["part_isElectron", "part_isMuon"])
        return float(np.mean(ak.to_numpy(ak.sum(x.part_isElectron + x.part_isMuon, axis=1) > 0)))

    assert lepton_fraction("TTBarLep") > 0.5
    assert lepton_fraction("HToWW2Q1L") > 0.5
    assert lepton_fraction("ZJetsToNuNu") < 0.3
