"""Toy JUNO-like liquid-scintillator detector: through-going cosmic muons -> PMT hits (x, y, z, t, q).

The physics choices and every constant are explained in docs/tracks.md. All work is vectorised numpy; one
event depends only on the ``numpy.random.Generator`` it is given, so seeding per event makes a dataset
independent of how events are split over files and worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

C_M_PER_NS = 0.299792458  # speed of light in vacuum [m/ns]


@dataclass(frozen=True)
class DetectorConfig:
    """Constants of the toy detector (units: metres, nanoseconds, photons)."""

    radius_m: float = 17.7  # liquid-scintillator sphere (JUNO acrylic vessel inner radius); muons cross it
    pmt_sphere_radius_m: float = 19.5  # PMT photocathodes sit in the water buffer, ~1.8 m outside the scintillator
    n_pmts: int = 17_612  # JUNO's large-PMT count, laid out on a Fibonacci sphere at pmt_sphere_radius_m
    pmt_radius_m: float = 0.254  # 20-inch PMT photocathode radius
    quantum_efficiency: float = 0.30  # photon-detection efficiency of the large PMTs
    refractive_index: float = 1.48  # LAB-based scintillator
    attenuation_length_m: float = 20.0  # absorption + scattering, treated as pure attenuation
    scint_photons_per_cm: float = 2.0e4  # ~1e4 photons/MeV x ~2 MeV/cm for a minimum-ionising muon
    cherenkov_photons_per_cm: float = 400.0  # Frank-Tamm, 300-600 nm, beta=1, n=1.48
    cherenkov_sigma_deg: float = 5.0  # cone smearing: dispersion, scattering, muon multiple scattering
    scint_tau_ns: tuple[float, float] = (4.6, 18.0)  # fast / slow decay times of the scintillator
    scint_tau_weights: tuple[float, float] = (0.71, 0.29)
    photon_scale: float = 2.0e-4  # photon-statistics cap: fraction of the real light that is simulated
    tts_sigma_ns: float = 3.0  # PMT transit-time spread (Gaussian sigma, MCP-PMT-like)
    gain_sigma: float = 0.3  # single-photo-electron charge resolution (relative)
    dark_rate_hz: float = 20.0e3  # dark-count rate per PMT
    window_ns: tuple[float, float] = (-100.0, 500.0)  # readout window relative to the muon's entry time
    step_m: float = 0.5  # track discretisation for the light-emission integral
    muon_cos2_exponent: float = 2.0  # dN/dcos(theta) ~ cos(theta)**k for downward muons (k=2: sea level)
    min_hits: int = 100  # events with fewer hits are re-drawn (very short corner-clipping tracks)
    max_tries: int = 1000  # re-draw limit per event before giving up with an error

    def validate(self) -> None:
        """Raise ValueError naming the first nonsensical constant."""
        positive = {
            "radius_m": self.radius_m,
            "pmt_sphere_radius_m": self.pmt_sphere_radius_m,
            "n_pmts": self.n_pmts,
            "pmt_radius_m": self.pmt_radius_m,
            "refractive_index": self.refractive_index,
            "attenuation_length_m": self.attenuation_length_m,
            "photon_scale": self.photon_scale,
            "step_m": self.step_m,
            "max_tries": self.max_tries,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"DetectorConfig.{name} must be > 0, got {value!r}")
        if not 0 < self.quantum_efficiency <= 1:
            raise ValueError(f"DetectorConfig.quantum_efficiency must be in (0, 1], got {self.quantum_efficiency!r}")
        if self.refractive_index <= 1:
            raise ValueError(f"DetectorConfig.refractive_index must be > 1 for Cherenkov light, got "
                             f"{self.refractive_index!r}")
        if self.pmt_sphere_radius_m < self.radius_m:
            raise ValueError(f"DetectorConfig.pmt_sphere_radius_m ({self.pmt_sphere_radius_m}) must be >= radius_m "
                             f"({self.radius_m})")
        if self.window_ns[1] <= self.window_ns[0]:
            raise ValueError(f"DetectorConfig.window_ns must be (start, end) with end > start, got {self.window_ns!r}")
        if self.min_hits < 0:
            raise ValueError(f"DetectorConfig.min_hits must be >= 0, got {self.min_hits!r}")
        if min(self.scint_photons_per_cm, self.cherenkov_photons_per_cm, self.dark_rate_hz, self.tts_sigma_ns,
               self.gain_sigma) < 0:
            raise ValueError("DetectorConfig light yields, dark rate, TTS and gain sigma must be >= 0")


@dataclass
class TrackEvent:
    """One simulated event: time-ordered hits plus the true track (entry point on the sphere, unit direction)."""

    hit_x: np.ndarray
    hit_y: np.ndarray
    hit_z: np.ndarray
    hit_t: np.ndarray
    hit_q: np.ndarray
    entry: np.ndarray  # (3,) metres, on the sphere
    direction: np.ndarray  # (3,) unit vector
    track_length: float  # metres inside the scintillator
    n_dark_hits: int
    total_pe: float


def fibonacci_sphere(n: int, radius: float) -> np.ndarray:
    """Quasi-uniform points on a sphere (golden-angle spiral); returns (n, 3) positions."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r_xy = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return radius * np.stack([r_xy * np.cos(phi), r_xy * np.sin(phi), z], axis=1)


def sample_muon(rng: np.random.Generator, cfg: DetectorConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw a downward cosmic muon crossing the sphere: (entry point, unit direction, chord length).

    Zenith: dN/dcos ~ cos^k (per unit area normal to the beam). The sphere's projected area is the same disk for
    every direction, so a uniform impact point on that disk gives the correct flux-weighted tracks.
    """
    cos_t = rng.random() ** (1.0 / (cfg.muon_cos2_exponent + 1.0))
    sin_t = np.sqrt(max(0.0, 1.0 - cos_t * cos_t))
    phi = 2.0 * np.pi * rng.random()
    direction = np.array([sin_t * np.cos(phi), sin_t * np.sin(phi), -cos_t])
    # orthonormal basis (u, v) of the plane normal to the direction
    helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(direction, helper)
    u /= np.linalg.norm(u)
    v = np.cross(direction, u)
    b_r = cfg.radius_m * np.sqrt(rng.random())
    b_phi = 2.0 * np.pi * rng.random()
    impact = b_r * (np.cos(b_phi) * u + np.sin(b_phi) * v)
    half_chord = np.sqrt(max(0.0, cfg.radius_m**2 - b_r**2))
    entry = impact - half_chord * direction
    return entry, direction, 2.0 * half_chord


def expected_pe(
    seg_pos: np.ndarray, direction: np.ndarray, pmts: np.ndarray, cfg: DetectorConfig, *, seg_len_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean photo-electrons per (segment, PMT) for scintillation and Cherenkov light, and the distances.

    Solid angle of a PMT = pi a^2 cos(incidence) / r^2; scintillation is isotropic (1/4pi); Cherenkov light is
    spread uniformly in azimuth around the cone with a Gaussian in cos(angle), normalised per unit solid angle.
    """
    diff = pmts[None, :, :] - seg_pos[:, None, :]  # (S, P, 3)
    dist = np.sqrt(np.einsum("spk,spk->sp", diff, diff))
    dist = np.maximum(dist, cfg.pmt_radius_m)
    unit = diff / dist[..., None]
    # PMTs look at the centre: incidence cosine = unit . (pmt/|pmt|)
    cos_inc = np.clip(np.einsum("spk,pk->sp", unit, pmts / cfg.pmt_sphere_radius_m), 0.0, 1.0)
    omega = np.pi * cfg.pmt_radius_m**2 * cos_inc / dist**2
    detect = cfg.quantum_efficiency * cfg.photon_scale * np.exp(-dist / cfg.attenuation_length_m) * omega
    step_cm = seg_len_m * 100.0
    lam_scint = detect * (cfg.scint_photons_per_cm * step_cm / (4.0 * np.pi))
    cos_alpha = unit @ direction
    cos_c = 1.0 / cfg.refractive_index
    sigma_cos = np.sin(np.arccos(cos_c)) * np.deg2rad(cfg.cherenkov_sigma_deg)
    density = np.exp(-0.5 * ((cos_alpha - cos_c) / sigma_cos) ** 2) / (np.sqrt(2.0 * np.pi) * sigma_cos)
    lam_cher = detect * (cfg.cherenkov_photons_per_cm * step_cm / (2.0 * np.pi)) * density
    return lam_scint, lam_cher, dist


def _scint_delay(rng: np.random.Generator, n: int, cfg: DetectorConfig) -> np.ndarray:
    """Scintillation emission delays from the two-exponential decay-time spectrum."""
    weights = np.asarray(cfg.scint_tau_weights, dtype=np.float64)
    comp = rng.choice(len(cfg.scint_tau_ns), size=n, p=weights / weights.sum())
    return rng.exponential(np.asarray(cfg.scint_tau_ns)[comp])


def _simulate_once(rng: np.random.Generator, pmts: np.ndarray, cfg: DetectorConfig) -> TrackEvent:
    """One muon -> hits, without the min-hits requirement."""
    entry, direction, length = sample_muon(rng, cfg)
    n_seg = max(1, int(np.ceil(length / cfg.step_m)))
    s_mid = (np.arange(n_seg) + 0.5) * (length / n_seg)
    seg_pos = entry[None, :] + s_mid[:, None] * direction[None, :]
    lam_scint, lam_cher, dist = expected_pe(seg_pos, direction, pmts, cfg, seg_len_m=length / n_seg)

    # Poisson counts per (segment, PMT, process): their sum per PMT is Poisson in the PMT's total mean.
    n_s = rng.poisson(lam_scint)
    n_c = rng.poisson(lam_cher)
    v_light = C_M_PER_NS / cfg.refractive_index
    times, pmt_ids = [], []
    for counts, is_scint in ((n_s, True), (n_c, False)):
        seg_idx, pmt_idx = np.nonzero(counts)
        reps = counts[seg_idx, pmt_idx]
        seg_rep = np.repeat(seg_idx, reps)
        pmt_rep = np.repeat(pmt_idx, reps)
        # emission point uniform inside its segment (the muon moves at c)
        s_emit = s_mid[seg_rep] + (rng.random(seg_rep.size) - 0.5) * (length / n_seg)
        t = s_emit / C_M_PER_NS + dist[seg_rep, pmt_rep] / v_light
        if is_scint:
            t = t + _scint_delay(rng, t.size, cfg)
        times.append(t + rng.normal(0.0, cfg.tts_sigma_ns, size=t.size))
        pmt_ids.append(pmt_rep)
    t_pe = np.concatenate(times)
    p_pe = np.concatenate(pmt_ids)
    in_window = (t_pe >= cfg.window_ns[0]) & (t_pe < cfg.window_ns[1])
    t_pe, p_pe = t_pe[in_window], p_pe[in_window]

    n_pmts = pmts.shape[0]
    npe = np.bincount(p_pe, minlength=n_pmts).astype(np.float64)
    first_t = np.full(n_pmts, np.inf)
    np.minimum.at(first_t, p_pe, t_pe)

    # dark noise: each PMT fires with probability rate * window, at a uniform time in the window
    win = cfg.window_ns[1] - cfg.window_ns[0]
    p_dark = min(1.0, cfg.dark_rate_hz * win * 1e-9)
    dark = np.nonzero(rng.random(n_pmts) < p_dark)[0]
    t_dark = cfg.window_ns[0] + win * rng.random(dark.size)
    first_t[dark] = np.minimum(first_t[dark], t_dark)
    npe_total = npe.copy()
    npe_total[dark] += 1.0

    hit = np.nonzero(npe_total > 0)[0]
    k = npe_total[hit]
    # charge = sum of k single-PE gains ~ Gamma(1/s^2, s^2) each -> Gamma(k/s^2, s^2)
    if cfg.gain_sigma > 0:
        s2 = cfg.gain_sigma**2
        q = rng.gamma(k / s2, s2)
    else:
        q = k
    t_hit = first_t[hit] - cfg.window_ns[0]  # ns from the start of the readout window
    order = np.argsort(t_hit, kind="stable")
    hit, q, t_hit = hit[order], q[order], t_hit[order]
    return TrackEvent(
        hit_x=pmts[hit, 0],
        hit_y=pmts[hit, 1],
        hit_z=pmts[hit, 2],
        hit_t=t_hit,
        hit_q=q,
        entry=entry,
        direction=direction,
        track_length=float(length),
        n_dark_hits=int(np.count_nonzero(npe[dark] == 0)),
        total_pe=float(npe.sum()),
    )


def simulate_event(rng: np.random.Generator, pmts: np.ndarray, cfg: DetectorConfig) -> TrackEvent:
    """Simulate one event with at least ``cfg.min_hits`` hits (re-drawing the muon otherwise)."""
    for _ in range(cfg.max_tries):
        event = _simulate_once(rng, pmts, cfg)
        if event.hit_t.size >= cfg.min_hits:
            return event
    raise RuntimeError(
        f"no event reached min_hits={cfg.min_hits} in {cfg.max_tries} tries: lower --min-hits or raise the light "
        f"(photon_scale={cfg.photon_scale}, n_pmts={cfg.n_pmts})"
    )
