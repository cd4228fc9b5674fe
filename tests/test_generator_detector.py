"""The Delphes-CMS-like detector stage (data/detector.py) on hand-made particles: card formulas, bending,
tower merging, E-flow, thresholds, flags and impact parameters. Fixed seeds; margins of >= 4 sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.detector import (
    DetectorConfig,
    StableParticles,
    calorimeter_entry,
    ecal_resolution,
    hcal_resolution,
    momentum_resolution,
    simulate,
    tracking_efficiency,
)

MASS = {211: 0.1396, -211: 0.1396, 13: 0.1057, -13: 0.1057, 11: 0.000511, 22: 0.0, 2112: 0.9396, 130: 0.4976}
CHARGE = {211: 1.0, -211: -1.0, 13: -1.0, -13: 1.0, 11: -1.0, 22: 0.0, 2112: 0.0, 130: 0.0}


def particles(rows: list[tuple[int, int, float, float, float]], vy: list[float] | None = None) -> StableParticles:
    """rows of (event, pid, pT, eta, phi) -> StableParticles produced at the origin (or at y = vy)."""
    ev, pid, pt, eta, phi = (np.array(c) for c in zip(*rows, strict=True))
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    m = np.array([MASS[int(p)] for p in pid])
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    zero = np.zeros(len(pt))
    y = zero if vy is None else np.asarray(vy, dtype=float)
    q = np.array([CHARGE[int(p)] for p in pid])
    return StableParticles(ev.astype(np.int64), pid.astype(np.int32), q, px, py, pz, e, zero, y, zero)


def test_card_formulas_at_reference_points() -> None:
    apid = np.array([211, 211, 211, 11, 11, 13, 13, 211])
    pt = np.array([0.5, 5.0, 5.0, 5.0, 200.0, 0.5, 50.0, 0.05])
    aeta = np.array([0.3, 0.3, 2.0, 2.0, 0.3, 2.0, 1.0, 0.3])
    assert tracking_efficiency(apid, pt, aeta).tolist() == [0.70, 0.95, 0.85, 0.83, 0.99, 0.70, 0.99, 0.0]
    assert tracking_efficiency(np.array([211]), np.array([5.0]), np.array([2.6])).tolist() == [0.0]
    res = momentum_resolution(np.array([211, 11, 13]), np.array([100.0, 100.0, 100.0]), np.array([0.3, 1.0, 2.0]))
    assert res == pytest.approx([math.hypot(0.01, 0.015), math.hypot(0.05, 0.17), math.hypot(0.025, 0.035)])
    det = DetectorConfig()
    # ECAL barrel at eta 0: 0.8% (+) 11%/sqrt(E) (+) 0.40 GeV; HCAL: 5% (+) 150%/sqrt(E)
    assert ecal_resolution(np.array([100.0]), np.array([0.0]), det)[0] == pytest.approx(math.sqrt(0.64 + 1.21 + 0.16))
    assert hcal_resolution(np.array([100.0]), np.array([0.0]), det)[0] == pytest.approx(math.sqrt(25.0 + 225.0))


def test_charged_particles_bend_and_soft_ones_end_on_an_endcap() -> None:
    det = DetectorConfig()
    pt = np.array([10.0, 10.0, 10.0, 0.5])
    pz = np.zeros(4) + np.array([0.0, 0.0, 0.0, 0.05])
    q = np.array([1.0, -1.0, 0.0, 1.0])
    eta, phi = calorimeter_entry(pt, pz, np.zeros(4), q, det)
    # 10 GeV in 3.8 T: helix radius 8.77 m; at R = 1.29 m the chord points asin(1.29 / 17.54) = 0.0736 rad off
    assert phi[0] == pytest.approx(-math.asin(1.29 / (2 * 10.0 / (0.3 * 3.8))), rel=1e-6)
    assert phi[1] == pytest.approx(-phi[0]) and phi[2] == 0.0 and eta[2] == 0.0
    # 0.5 GeV cannot reach R = 1.29 m (2 r = 0.88 m): it ends on the endcap, far forward
    assert abs(eta[3]) > 2.0


def test_photons_in_one_ecal_tower_merge_and_separate_ones_do_not() -> None:
    # event 0: three 20 GeV photons inside one 0.0174 x 1 degree tower, one 20 GeV photon 0.3 away
    rows = [(0, 22, 20.0, 0.108, 0.101), (0, 22, 20.0, 0.112, 0.104), (0, 22, 20.0, 0.116, 0.102),
            (0, 22, 20.0, 0.40, 0.40)]  # fmt: skip
    reco = simulate(particles(rows), DetectorConfig(), np.random.default_rng(1))
    assert reco.is_photon.tolist() == [True, True]
    e = np.sort(reco.e)
    e_merged = 60.0 * math.cosh(0.112)
    sigma = ecal_resolution(np.array([e_merged]), np.array([0.1]), DetectorConfig())[0]
    assert abs(e[1] - e_merged) < 5 * sigma and abs(e[0] - 20.0 * math.cosh(0.4)) < 5 * sigma
    # the merged photon sits inside the tower (its position is drawn uniformly in it)
    eta = np.arcsinh(reco.pz / np.hypot(reco.px, reco.py))
    assert np.any((eta > 0.1044) & (eta < 0.1218))


def test_tracked_pions_absorb_their_hcal_energy_untracked_ones_become_neutral_hadrons() -> None:
    """400 events with one 30 GeV pi+ each: ~95% tracks; an untracked pion shows up as a neutral hadron."""
    n = 400
    rows = [(i, 211, 30.0, 0.2, 0.5) for i in range(n)]
    reco = simulate(particles(rows), DetectorConfig(), np.random.default_rng(2))
    tracks = np.bincount(reco.event[reco.is_ch_had], minlength=n)
    neutral = np.bincount(reco.event[reco.is_neu_had], minlength=n)
    assert 0.90 < tracks.mean() < 0.99  # efficiency 0.95, binomial sigma 0.011
    assert np.all(tracks <= 1) and np.all((tracks == 0) | (neutral == 0) | (neutral == 1))
    # tracked: the tower holds only the pion's own energy; an excess above the HCAL significance threshold
    # (1 sigma by default) needs an upward fluctuation of the tower energy (~16% of events; binomial sigma 0.02)
    assert 0.75 < np.mean(neutral[tracks == 1] == 0) < 0.95
    # untracked: 30 GeV in the HCAL, sigma ~8 GeV, above the 2 sigma / 1 GeV thresholds in most events
    assert np.mean(neutral[tracks == 0] == 1) > 0.7
    assert np.all(reco.charge[reco.is_neu_had] == 0) and np.all(reco.d0err[reco.is_neu_had] == 0)


def test_flags_thresholds_and_impact_parameters() -> None:
    """A displaced pion, a muon, a photon below the ECAL threshold and a K0L."""
    rows = [(0, 211, 10.0, 0.1, 0.0), (0, -13, 20.0, 0.5, 1.0), (0, 22, 0.2, -0.5, 2.0), (0, 130, 40.0, 1.0, -2.0)]
    det = DetectorConfig(track_pt_min=0.1)
    reco = simulate(particles(rows, vy=[2.0, 0.0, 0.0, 0.0]), det, np.random.default_rng(3))
    # pion and muon are tracked (efficiency 0.95 / 0.99 with this seed), the 0.2 GeV photon is below threshold
    assert reco.is_ch_had.sum() == 1 and reco.is_muon.sum() == 1
    assert not reco.is_photon.any() and not reco.is_electron.any()
    # the K0L is a neutral hadron at its own direction (phi = -2), 40 GeV pT within 5 sigma of the HCAL
    phi = np.arctan2(reco.py, reco.px)
    k0l = reco.is_neu_had & (np.abs(phi + 2.0) < 0.1)
    assert k0l.sum() == 1
    sigma_e = hcal_resolution(np.array([40.0 * math.cosh(1.0)]), np.array([1.0]), det)[0]
    assert abs(reco.e[k0l][0] - 40.0 * math.cosh(1.0)) < 5 * sigma_e
    pion = np.nonzero(reco.is_ch_had)[0][0]
    # d0 = (x py - y px) / pT = -2 mm for the pion produced at y = 2 mm; its sigma follows a (+) b/pT
    sigma = math.hypot(det.d0_res_const, det.d0_res_pt / 10.0)
    assert reco.d0err[pion] == pytest.approx(sigma, rel=0.01)
    assert abs(reco.d0[pion] + 2.0) < 5 * sigma
    assert reco.charge[pion] == 1.0 and reco.charge[reco.is_muon][0] == 1.0
    assert np.all(reco.e > 0)


def test_tracks_below_the_pt_threshold_are_not_tracks() -> None:
    rows = [(i, 211, 1.0, 0.0, 0.0) for i in range(50)]
    reco = simulate(particles(rows), DetectorConfig(track_pt_min=1.3), np.random.default_rng(4))
    assert not reco.is_ch_had.any()
