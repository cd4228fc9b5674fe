"""Equivalence of the generator's substructure code with references: soft drop vs fjcontrib, tau_N vs numpy.

The detector stage has its own tests in tests/test_generator_detector.py.
"""

from __future__ import annotations

import fastjet as fj
import numpy as np
import pytest

from data.pythia_jets import momentum_lists, nsubjettiness, softdrop_mass


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
