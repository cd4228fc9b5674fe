"""Equivalence of the generator's substructure code with references: soft drop vs fjcontrib, tau_N vs numpy."""

from __future__ import annotations

import fastjet as fj
import numpy as np
import pytest

from data.pythia_jets import (
    ChargeTable,
    DetectorModel,
    EventBatch,
    apply_detector,
    momentum_lists,
    nsubjettiness,
    softdrop_mass,
)


def _toy_jets(n_jets: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """Random 2- or 3-prong jets around eta=0.3, phi=1 (px, py, pz, E of massless particles)."""
    rng = np.random.default_rng(seed)
    jets = []
    for _ in range(n_jets):
        n_prong = rng.integers(1, 4)
        centres = rng.normal([0.3, 1.0], 0.25, size=(n_prong, 2))
        n = int(rng.integers(2, 80))
        which = rng.integers(0, n_prong, size=n)
        eta = centres[which, 0] + rng.normal(0, 0.05, n)
        phi = centres[which, 1] + rng.normal(0, 0.05, n)
        pt = rng.exponential(15.0, n) + 0.5
        jets.append((pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)))
    return jets


def test_softdrop_matches_fjcontrib() -> None:
    jets = _toy_jets(60, seed=3)
    ours = np.array([softdrop_mass(*j, beta=0.0, zcut=0.1, r0=0.8) for j in jets])
    counts = np.array([len(j[0]) for j in jets])
    vec = momentum_lists(*(np.concatenate([j[k] for j in jets]) for k in range(4)), counts)
    cs = fj.ClusterSequence(vec, fj.JetDefinition(fj.cambridge_algorithm, 1000.0))
    ref = np.asarray(cs.exclusive_jets_softdrop_grooming(njets=1, beta=0.0, symmetry_cut=0.1, R0=0.8).msoftdrop)
    assert np.allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert np.ptp(ours) > 10.0  # the toy jets span a range of masses: the comparison is not trivial


def test_nsubjettiness_matches_numpy_with_exclusive_kt_axes() -> None:
    jets = _toy_jets(20, seed=4)
    counts = np.array([len(j[0]) for j in jets])
    vec = momentum_lists(*(np.concatenate([j[k] for j in jets]) for k in range(4)), counts)
    tau = nsubjettiness(vec, r0=0.8)
    for i, (px, py, pz, e) in enumerate(jets):
        parts = [fj.PseudoJet(*v) for v in zip(px.tolist(), py.tolist(), pz.tolist(), e.tolist(), strict=True)]
        pt = np.hypot(px, py)
        for n in range(1, 5):
            if len(parts) <= n:
                assert tau[i, n - 1] == 0.0
                continue
            axes = fj.ClusterSequence(parts, fj.JetDefinition(fj.kt_algorithm, 10.0)).exclusive_jets(n)
            dr = np.array([[p.delta_R(a) for a in axes] for p in parts]).min(axis=1)
            assert tau[i, n - 1] == pytest.approx((pt * dr).sum() / (pt.sum() * 0.8), rel=1e-6, abs=1e-9)


def test_detector_model_thresholds_flags_and_impact_parameters() -> None:
    """Hand-made event: a displaced pion, a soft pion, a muon, a photon, a neutron and a neutrino."""

    class _PData:
        def charge(self, pid: int) -> float:
            return {211: 1.0, -13: 1.0, 13: -1.0, 22: 0.0, 2112: 0.0, 12: 0.0, 11: -1.0}[pid]

    pid = np.array([90, 211, 211, 13, 22, 2112, 12, 11])
    status = np.array([-11, 91, 91, 91, 91, 91, 91, 91])
    px = np.array([0.0, 10.0, 0.3, 20.0, 5.0, 8.0, 30.0, 1.0])
    py = np.zeros(8)
    pz = np.array([0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 30.0])  # the electron is at eta ~ 4.1: outside
    mass = np.array([0.0, 0.1396, 0.1396, 0.1057, 0.0, 0.9396, 0.0, 0.000511])
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    vx = np.zeros(8)
    vy = np.array([0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # the 10 GeV pion starts 2 mm off the beam line
    vz = np.zeros(8)
    batch = EventBatch(np.array([0, 8]), pid, status, np.zeros(8, np.int32), np.zeros(8, np.int32),
                       px, py, pz, e, vx, vy, vz)  # fmt: skip
    det = DetectorModel()
    reco = apply_detector(batch, ChargeTable(_PData()), det, np.random.default_rng(0))
    # kept: the 10 GeV pion, the muon, the photon, the neutron (soft pion, neutrino, forward electron lost)
    assert len(reco) == 4
    assert reco.is_ch_had.tolist() == [True, False, False, False]
    assert reco.is_muon.tolist() == [False, True, False, False]
    assert reco.is_photon.tolist() == [False, False, True, False]
    assert reco.is_neu_had.tolist() == [False, False, False, True]
    assert reco.charge.tolist() == [1.0, -1.0, 0.0, 0.0]
    # d0 = (x py - y px) / pT = -2 mm for the displaced pion; its sigma follows a (+) b/pT
    sigma = np.hypot(det.d0_res_const, det.d0_res_pt / 10.0)
    assert reco.d0err[0] == pytest.approx(sigma)
    assert abs(reco.d0[0] + 2.0) < 5 * sigma
    assert reco.d0[2] == 0.0 and reco.d0err[3] == 0.0 and reco.dzerr[2] == 0.0
    assert np.all(reco.e > 0)
