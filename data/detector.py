"""A Delphes-like detector stage modelled on Delphes' CMS card (``cards/delphes_card_CMS.tcl``, delphes/delphes).

Pipeline (every step vectorised over a whole batch of events, flat numpy arrays):

1. propagation in the solenoid (Bz = 3.8 T, radius 1.29 m, half-length 3 m): particles produced outside the
   cylinder are dropped; charged particles bend, so their calorimeter entry point differs from their direction;
2. tracking efficiency and momentum smearing of charged hadrons, electrons and muons (log-normal, as Delphes);
3. ECAL (0.0174 x 1 degree towers) and HCAL (0.087 x 5 degree towers in |eta| < 1.653, 10 degrees beyond):
   every particle deposits its energy (fractions per particle type), tower energies are smeared log-normally and
   kept above an energy and a significance threshold;
4. E-flow: in each tower, the energy not explained by the tracks that deposit there becomes a photon (ECAL) or a
   neutral hadron (HCAL) at the tower centre (smeared uniformly inside the tower) if it is significant; otherwise
   the tracks are rescaled to the weighted mean of the track and calorimeter measurements;
5. impact parameters of tracks (straight-line extrapolation from the production vertex) smeared with
   sigma = a (+) b / pT.

Every parameter, its value and its source are listed in docs/physics.md. Units: GeV, mm, radians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_ELECTRON, _MUON, _PHOTON = 11, 13, 22
_V0 = (310, 3122)  # K0S, Lambda: 30% ECAL / 70% HCAL in the card (only if Pythia leaves them undecayed)
_TWO_PI = 2.0 * math.pi

# HCAL tower eta edges of the CMS card for |eta| <= 3.0 (0.087 wide up to 1.653, then the listed edges)
_HCAL_EDGES_POS = (
    *(round(0.087 * i, 3) for i in range(0, 20)),
    1.74, 1.83, 1.93, 2.043, 2.172, 2.322, 2.5, 2.65, 2.868, 2.95, 3.125,
)  # fmt: skip


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters of the detector stage. Card values unless marked CALIBRATED (docs/physics.md, issue 14).

    The CALIBRATED values were tuned so that generated jets match real JetClass statistics (multiplicity,
    particle-type fractions) and the published JetClass ParticleNet's rates; the card has no such parameter
    (track pT threshold, impact-parameter resolution) or has it in its older, combined-calorimeter version
    (HCAL significance threshold 1.0).
    """

    bz: float = 3.8  # T
    radius: float = 1290.0  # mm, solenoid (= calorimeter entry) radius
    half_length: float = 3000.0  # mm
    track_pt_min: float = 1.5  # GeV, CALIBRATED (card: efficiency > 0 above 0.1 GeV); softer ones reach the calos
    ecal_eta_step: float = 0.0174  # ECAL towers: 0.0174 in eta x 1 degree in phi up to |eta| = 2.958
    ecal_eta_max: float = 2.958
    ecal_phi_bins: int = 360
    hcal_phi_bins_central: int = 72  # 5 degrees for |eta| < 1.653
    hcal_phi_bins_forward: int = 36  # 10 degrees beyond
    hcal_eta_central: float = 1.653
    ecal_fine: bool = True  # False: ECAL towers on the HCAL grid (the card's older combined-calorimeter version)
    ecal_e_min: float = 0.5  # GeV, tower / E-flow threshold
    hcal_e_min: float = 1.0
    ecal_significance_min: float = 2.0  # E / sigma(E) threshold of towers and of the E-flow neutral excess
    hcal_significance_min: float = 1.5  # CALIBRATED: between the older card (1.0) and the current one (2.0)
    ecal_const: float = 0.008  # sigma(E) = shape(eta) * (c E (+) s sqrt(E) (+) n)
    ecal_stoch: float = 0.11
    ecal_noise: float = 0.40
    ecal_eta_shape: bool = True
    d0_res_const: float = 0.020  # mm, CALIBRATED: sigma(d0) = a (+) b / pT
    d0_res_pt: float = 0.200  # mm * GeV, CALIBRATED
    dz_res_const: float = 0.100  # mm, CALIBRATED: sigma(dz) = a (+) b / pT
    dz_res_pt: float = 1.000  # mm * GeV, CALIBRATED


@dataclass
class StableParticles:
    """Visible final-state particles of a batch (flat, sorted by event); vertex in mm."""

    event: np.ndarray
    pid: np.ndarray
    charge: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    vz: np.ndarray


@dataclass
class RecoParticles:
    """Detector-level particles (E-flow candidates) of a batch (flat), sorted by event."""

    event: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    charge: np.ndarray
    is_ch_had: np.ndarray
    is_neu_had: np.ndarray
    is_photon: np.ndarray
    is_electron: np.ndarray
    is_muon: np.ndarray
    d0: np.ndarray
    d0err: np.ndarray
    dz: np.ndarray
    dzerr: np.ndarray

    def __len__(self) -> int:
        return len(self.px)


def eta_of(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Pseudorapidity; +-1e6-ish for particles along the beam."""
    pt = np.hypot(px, py)
    return np.arcsinh(np.divide(pz, pt, out=np.full_like(pz, np.sign(pz) * 1e6 + 0.0), where=pt > 0))


def log_normal(mean: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log-normal draws with the given mean and standard deviation (Delphes smears energies this way).

    Positive by construction; 0 where the mean is not positive.
    """
    m = np.maximum(mean, 1e-12)
    b2 = np.log1p((sigma / m) ** 2)
    out = np.exp(np.log(m) - 0.5 * b2 + np.sqrt(b2) * rng.standard_normal(len(m)))
    return np.where(mean > 0, out, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Card formulas: efficiencies and resolutions
# ----------------------------------------------------------------------------------------------------------


def tracking_efficiency(apid: np.ndarray, pt: np.ndarray, aeta: np.ndarray) -> np.ndarray:
    """Tracking efficiency of the CMS card (charged hadrons, electrons, muons), 0 outside |eta| < 2.5."""
    barrel = aeta <= 1.5
    soft = pt <= 1.0
    # charged hadrons: 0.70 / 0.95 (barrel), 0.60 / 0.85 (endcap) for 0.1 < pT <= 1 / pT > 1
    eff = np.where(barrel, np.where(soft, 0.70, 0.95), np.where(soft, 0.60, 0.85))
    ele = apid == _ELECTRON
    e_hard = pt > 100.0
    eff_e = np.where(
        barrel, np.where(soft, 0.73, np.where(e_hard, 0.99, 0.95)), np.where(soft, 0.50, np.where(e_hard, 0.90, 0.83))
    )
    eff_mu = np.where(barrel, np.where(soft, 0.75, 0.99), np.where(soft, 0.70, 0.98))
    eff = np.where(ele, eff_e, np.where(apid == _MUON, eff_mu, eff))
    return np.where((pt > 0.1) & (aeta <= 2.5), eff, 0.0)


def momentum_resolution(apid: np.ndarray, pt: np.ndarray, aeta: np.ndarray) -> np.ndarray:
    """Relative pT resolution sigma(pT)/pT = c (+) s * pT of the card, per eta region and particle type."""
    region = np.where(aeta <= 0.5, 0, np.where(aeta <= 1.5, 1, 2))
    const = np.array([[0.01, 0.015, 0.025], [0.03, 0.05, 0.15], [0.01, 0.015, 0.025]])
    slope = np.array([[1.5e-4, 2.5e-4, 5.5e-4], [1.3e-3, 1.7e-3, 3.1e-3], [1.0e-4, 1.5e-4, 3.5e-4]])
    kind = np.where(apid == _ELECTRON, 1, np.where(apid == _MUON, 2, 0))
    return np.hypot(const[kind, region], slope[kind, region] * pt)


def ecal_resolution(energy: np.ndarray, aeta: np.ndarray, det: DetectorConfig) -> np.ndarray:
    """sigma(E) of the ECAL (GeV): eta-dependent factor x (c E (+) s sqrt(E) (+) n); HF beyond 2.5."""
    core = np.sqrt((det.ecal_const * energy) ** 2 + det.ecal_stoch**2 * energy + det.ecal_noise**2)
    factor = np.where(aeta <= 1.5, 1.0 + 0.64 * aeta**2, 2.16 + 5.6 * (aeta - 2.0) ** 2)
    factor = factor if det.ecal_eta_shape else np.ones_like(aeta)
    forward = np.sqrt((0.107 * energy) ** 2 + 2.08**2 * energy)
    return np.where(aeta <= 2.5, factor * core, forward)


def hcal_resolution(energy: np.ndarray, aeta: np.ndarray, det: DetectorConfig) -> np.ndarray:
    """sigma(E) of the HCAL (GeV): 5% E (+) 150% sqrt(E) for |eta| <= 3 (130% / 270% beyond)."""
    return np.where(
        aeta <= 3.0,
        np.sqrt((0.050 * energy) ** 2 + 1.50**2 * energy),
        np.sqrt((0.130 * energy) ** 2 + 2.70**2 * energy),
    )


def energy_fractions(apid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ECAL, HCAL) energy fractions of the card: e and photons ECAL, hadrons HCAL, K0S/Lambda 0.3/0.7, mu 0."""
    em = (apid == _ELECTRON) | (apid == _PHOTON)
    v0 = np.isin(apid, _V0)
    f_ecal = np.where(em, 1.0, np.where(v0, 0.3, 0.0))
    f_hcal = np.where(em | (apid == _MUON), 0.0, np.where(v0, 0.7, 1.0))
    return f_ecal, f_hcal


# ----------------------------------------------------------------------------------------------------------
# Propagation and towers
# ----------------------------------------------------------------------------------------------------------


def calorimeter_entry(
    pt: np.ndarray, pz: np.ndarray, phi: np.ndarray, charge: np.ndarray, det: DetectorConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(eta, phi) of the point where a particle from the origin leaves the solenoid volume.

    Neutral particles fly straight. A charged particle runs on a helix of radius r = pT / (0.3 Bz) (m, GeV, T):
    it leaves through the barrel after a transverse arc length 2r asin(R / 2r) or through an endcap after
    L pT/|pz|, whichever comes first (soft "loopers" that cannot reach R end on an endcap, as in Delphes). The
    chord of an arc that turns by alpha points at phi - q alpha/2 and has length 2r sin(alpha/2).
    """
    charged = charge != 0
    r_helix = np.where(charged, pt / (0.3 * det.bz) * 1000.0, 1.0)  # mm (1.0: placeholder for neutrals)
    ratio = det.radius / (2.0 * r_helix)
    s_barrel = np.where(ratio <= 1.0, 2.0 * r_helix * np.arcsin(np.minimum(ratio, 1.0)), np.inf)
    s_barrel = np.where(charged, s_barrel, det.radius)
    s_endcap = np.where(pz != 0, det.half_length * pt / np.maximum(np.abs(pz), 1e-12), np.inf)
    s = np.minimum(s_barrel, s_endcap)
    half_turn = np.where(charged, s / (2.0 * r_helix), 0.0)
    chord = np.where(charged, 2.0 * r_helix * np.abs(np.sin(half_turn)), s)
    z = s * pz / np.maximum(pt, 1e-12)
    eta = np.arcsinh(z / np.maximum(chord, 1e-9))
    phi_out = (phi - np.sign(charge) * half_turn + math.pi) % _TWO_PI - math.pi
    return eta, phi_out


def hcal_edges() -> np.ndarray:
    """Sorted HCAL tower eta edges for |eta| <= 3.125 (symmetric)."""
    pos = np.asarray(_HCAL_EDGES_POS)
    return np.concatenate([-pos[:0:-1], pos])


@dataclass(frozen=True)
class TowerGrid:
    """Eta edges and phi bins per eta bin of one calorimeter."""

    edges: np.ndarray
    phi_bins: np.ndarray  # per eta bin (len(edges) - 1)


def ecal_grid(det: DetectorConfig) -> TowerGrid:
    """ECAL: uniform eta steps of 0.0174 up to |eta| = 2.958, 1 degree in phi (or the HCAL grid)."""
    if not det.ecal_fine:
        return hcal_grid(det)
    n = round(det.ecal_eta_max / det.ecal_eta_step)
    edges = det.ecal_eta_step * np.arange(-n, n + 1)
    return TowerGrid(edges, np.full(len(edges) - 1, det.ecal_phi_bins))


def hcal_grid(det: DetectorConfig) -> TowerGrid:
    """HCAL: 0.087 x 5 degrees for |eta| < 1.653, the card's wider eta bins x 10 degrees beyond."""
    edges = hcal_edges()
    centre = 0.5 * (edges[1:] + edges[:-1])
    phi_bins = np.where(np.abs(centre) < det.hcal_eta_central, det.hcal_phi_bins_central, det.hcal_phi_bins_forward)
    return TowerGrid(edges, phi_bins)


def tower_index(eta: np.ndarray, phi: np.ndarray, grid: TowerGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inside, eta bin, phi bin) of each entry point on a tower grid."""
    ieta = np.searchsorted(grid.edges, eta, side="right") - 1
    inside = (ieta >= 0) & (ieta < len(grid.edges) - 1)
    ieta = np.clip(ieta, 0, len(grid.edges) - 2)
    nphi = grid.phi_bins[ieta]
    iphi = np.minimum(np.floor((phi + math.pi) / _TWO_PI * nphi).astype(np.int64), nphi - 1)
    return inside, ieta, iphi


def tower_centre_draw(
    ieta: np.ndarray, iphi: np.ndarray, grid: TowerGrid, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A point drawn uniformly inside each tower (Delphes' SmearTowerCenter)."""
    lo, hi = grid.edges[ieta], grid.edges[ieta + 1]
    width = _TWO_PI / grid.phi_bins[ieta]
    u = rng.random((2, len(ieta)))
    eta = lo + (hi - lo) * u[0]
    phi = -math.pi + width * (iphi + u[1])
    return eta, (phi + math.pi) % _TWO_PI - math.pi


@dataclass
class EflowResult:
    """Output of one calorimeter: neutral E-flow objects and a rescale factor for each input deposit's track."""

    event: np.ndarray
    energy: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    track_factor: np.ndarray  # per deposit: multiply the depositing track's momentum by this (1: unchanged)


@dataclass
class Deposits:
    """Energy deposits in one calorimeter: true energy and, for tracked particles, the track's energy/variance."""

    event: np.ndarray
    energy: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    track_energy: np.ndarray  # 0 for untracked particles
    track_var: np.ndarray  # (sigma of track_energy)^2, 0 for untracked particles


def calorimeter_eflow(
    dep: Deposits,
    grid: TowerGrid,
    resolution,
    cuts: tuple[float, float],
    det: DetectorConfig,
    rng: np.random.Generator,
) -> EflowResult:
    """Towers and E-flow of one calorimeter (the algorithm of Delphes' SimpleCalorimeter, see module docstring).

    ``resolution(E, |eta|, det)`` gives sigma(E) in GeV; ``cuts`` = (minimum energy, minimum significance).
    Deposits outside the grid are lost.
    """
    e_min, sig_min = cuts
    inside, ieta, iphi = tower_index(dep.eta, dep.phi, grid)
    inside &= dep.energy > 0
    stride = int(grid.phi_bins.max())
    key = (dep.event.astype(np.int64) * len(grid.phi_bins) + ieta) * stride + iphi
    key = np.where(inside, key, -1)
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    w = inside.astype(np.float64)
    e_true = np.bincount(inv, dep.energy * w, minlength=len(uniq))
    e_trk = np.bincount(inv, dep.track_energy * w, minlength=len(uniq))
    var_trk = np.bincount(inv, dep.track_var * w, minlength=len(uniq))
    t_event, rest = np.divmod(np.maximum(uniq, 0), len(grid.phi_bins) * stride)
    t_ieta, t_iphi = np.divmod(rest, stride)
    aeta = np.abs(0.5 * (grid.edges[t_ieta] + grid.edges[t_ieta + 1]))
    sigma = resolution(e_true, aeta, det)
    e_meas = log_normal(e_true, sigma, rng)
    e_meas = np.where((e_meas < e_min) | (e_meas < sig_min * sigma) | (uniq < 0), 0.0, e_meas)
    neutral = e_meas - e_trk
    significance = neutral / np.sqrt(var_trk + sigma**2 + 1e-30)
    make = (neutral > e_min) & (significance > sig_min) & (uniq >= 0)
    # no significant excess: tracks take the inverse-variance mean of track and calorimeter measurements
    rescale = ~make & (e_trk > 0) & (uniq >= 0)
    w_trk = 1.0 / np.maximum(var_trk, 1e-30)
    w_cal = 1.0 / np.maximum(sigma**2, 1e-30)
    best = (w_trk * e_trk + w_cal * e_meas) / (w_trk + w_cal)
    factor = np.where(rescale, best / np.maximum(e_trk, 1e-30), 1.0)
    eta, phi = tower_centre_draw(t_ieta[make], t_iphi[make], grid, rng)
    return EflowResult(t_event[make], neutral[make], eta, phi, np.where(inside, factor[inv], 1.0))


def _deposits(sel: np.ndarray, frac: np.ndarray, p: StableParticles, calo, trk_e, trk_var) -> Deposits:
    """Deposits of the selected particles with energy fraction ``frac`` at their calorimeter entry point."""
    f = frac[sel]
    return Deposits(p.event[sel], f * p.e[sel], calo[0][sel], calo[1][sel], f * trk_e[sel], f * f * trk_var[sel])


def inside_volume(p: StableParticles, det: DetectorConfig) -> np.ndarray:
    """Particles produced inside the solenoid volume with non-zero pT (Delphes propagates only those)."""
    rxy = np.hypot(p.vx, p.vy)
    return (rxy < det.radius) & (np.abs(p.vz) < det.half_length) & (p.px**2 + p.py**2 > 1e-9)


def _subset(p: StableParticles, sel: np.ndarray) -> StableParticles:
    """The selected particles."""
    return StableParticles(*(getattr(p, f)[sel] for f in StableParticles.__dataclass_fields__))


@dataclass
class Tracks:
    """Which particles are tracked, their momentum scale (smearing x E-flow rescaling) and resolution."""

    tracked: np.ndarray
    scale: np.ndarray
    rel_res: np.ndarray


def make_tracks(
    p: StableParticles, pt: np.ndarray, aeta: np.ndarray, det: DetectorConfig, rng: np.random.Generator
) -> Tracks:
    """Tracking efficiency and log-normal pT smearing of charged particles (card formulas, pT > track_pt_min)."""
    apid = np.abs(p.pid)
    u = rng.random(len(pt))
    tracked = (p.charge != 0) & (u < tracking_efficiency(apid, pt, aeta)) & (pt > det.track_pt_min)
    rel = momentum_resolution(apid, pt, aeta)
    scale = np.where(tracked, log_normal(pt, rel * pt, rng) / np.maximum(pt, 1e-12), 1.0)
    return Tracks(tracked, scale, np.where(tracked, rel, 0.0))


def track_energy(p: StableParticles, trk: Tracks) -> tuple[np.ndarray, np.ndarray]:
    """(energy, energy variance) of each track after its current momentum scale; 0 for untracked particles."""
    p2 = p.px**2 + p.py**2 + p.pz**2
    m2 = np.maximum(p.e**2 - p2, 0.0)
    e = np.sqrt(p2 * trk.scale**2 + m2)
    return np.where(trk.tracked, e, 0.0), np.where(trk.tracked, (trk.rel_res * e) ** 2, 0.0)


def simulate(parts: StableParticles, det: DetectorConfig, rng: np.random.Generator) -> RecoParticles:
    """Detector response of a batch: tracks, ECAL photons and HCAL neutral hadrons (E-flow), sorted by event."""
    p = _subset(parts, inside_volume(parts, det))
    pt = np.hypot(p.px, p.py)
    eta, phi = eta_of(p.px, p.py, p.pz), np.arctan2(p.py, p.px)
    trk = make_tracks(p, pt, np.abs(eta), det, rng)
    calo = calorimeter_entry(pt, p.pz, phi, p.charge, det)
    f_ecal, f_hcal = energy_fractions(np.abs(p.pid))
    out = []
    for frac, grid, res, cuts in (
        (f_ecal, ecal_grid(det), ecal_resolution, (det.ecal_e_min, det.ecal_significance_min)),
        (f_hcal, hcal_grid(det), hcal_resolution, (det.hcal_e_min, det.hcal_significance_min)),
    ):
        sel = frac > 0
        e_trk, var_trk = track_energy(p, trk)
        flow = calorimeter_eflow(_deposits(sel, frac, p, calo, e_trk, var_trk), grid, res, cuts, det, rng)
        trk.scale[sel] *= np.where(trk.tracked[sel], flow.track_factor, 1.0)
        out.append(flow)
    return assemble(p, trk, out[0], out[1], det, rng)


def _neutral_momenta(flow: EflowResult) -> tuple[np.ndarray, ...]:
    """Massless 4-momenta of E-flow neutrals from energy and tower position."""
    pt = flow.energy / np.cosh(flow.eta)
    return pt * np.cos(flow.phi), pt * np.sin(flow.phi), pt * np.sinh(flow.eta), flow.energy


def impact_parameters(
    p: StableParticles, det: DetectorConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(d0, sigma_d0, dz, sigma_dz) in mm: straight-line extrapolation from the production vertex, smeared."""
    pt = np.maximum(np.hypot(p.px, p.py), 1e-12)
    d0_true = (p.vx * p.py - p.vy * p.px) / pt
    dz_true = p.vz - (p.vx * p.px + p.vy * p.py) / pt * (p.pz / pt)
    d0err = np.hypot(det.d0_res_const, det.d0_res_pt / pt)
    dzerr = np.hypot(det.dz_res_const, det.dz_res_pt / pt)
    noise = rng.standard_normal((2, len(pt)))
    return d0_true + d0err * noise[0], d0err, dz_true + dzerr * noise[1], dzerr


def assemble(
    p: StableParticles, trk: Tracks, ecal: EflowResult, hcal: EflowResult, det: DetectorConfig,
    rng: np.random.Generator,
) -> RecoParticles:  # fmt: skip
    """Tracks (flags from the true PDG id) + photons + neutral hadrons, sorted (stably) by event."""
    t = _subset(p, trk.tracked)
    s = trk.scale[trk.tracked]
    e_trk, _ = track_energy(t, Tracks(np.ones(len(s), bool), s, np.zeros(len(s))))
    d0, d0err, dz, dzerr = impact_parameters(t, det, rng)
    apid = np.abs(t.pid)
    n_t, n_e, n_h = len(s), len(ecal.energy), len(hcal.energy)
    gx, gy, gz, ge = _neutral_momenta(ecal)
    hx, hy, hz, he = _neutral_momenta(hcal)
    zeros = np.zeros(n_e + n_h)
    flag = np.zeros(n_t + n_e + n_h, dtype=bool)
    event = np.concatenate([t.event, ecal.event, hcal.event])
    order = np.argsort(event, kind="stable")

    def cat(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Tracks, photons, neutral hadrons in event order."""
        return np.concatenate([a, b, c])[order]

    def mark(lo: int, hi: int, mask: np.ndarray | None = None) -> np.ndarray:
        """A flag that is ``mask`` (or True) on rows lo:hi of the concatenation, in event order."""
        out = flag.copy()
        out[lo:hi] = True if mask is None else mask
        return out[order]

    return RecoParticles(
        event=event[order],
        px=cat(t.px * s, gx, hx), py=cat(t.py * s, gy, hy), pz=cat(t.pz * s, gz, hz), e=cat(e_trk, ge, he),
        charge=np.concatenate([t.charge, zeros])[order],
        is_ch_had=mark(0, n_t, (apid != 11) & (apid != 13)),
        is_neu_had=mark(n_t + n_e, n_t + n_e + n_h),
        is_photon=mark(n_t, n_t + n_e),
        is_electron=mark(0, n_t, apid == 11),
        is_muon=mark(0, n_t, apid == 13),
        d0=np.concatenate([d0, zeros])[order], d0err=np.concatenate([d0err, zeros])[order],
        dz=np.concatenate([dz, zeros])[order], dzerr=np.concatenate([dzerr, zeros])[order],
    )  # fmt: skip
