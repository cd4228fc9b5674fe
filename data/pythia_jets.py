"""Pythia 8 events -> JetClass-style jets: process cards, the detector stage (data/detector.py), anti-kT
clustering, truth matching, soft drop and N-subjettiness.

Everything here works on whole batches of events (``Pythia.nextBatch``) with flat numpy arrays, because
per-particle Python access to the Pythia event record costs as much time as generating the event.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import awkward as ak
import fastjet as fj
import numpy as np

from data.detector import DetectorConfig, RecoParticles, StableParticles, simulate

# Pythia's random seed must lie in [1, 900_000_000] (0 means "seed from the clock").
_PYTHIA_SEED_MAX = 900_000_000
_NEUTRINOS = (12, 14, 16)
_RESONANCES = (6, 23, 24, 25)
_CHARGED_LEPTONS = (11, 13, 15)

_COMMON_SETTINGS = (
    "Beams:eCM = 13000.",
    "Print:quiet = on",
    "Next:numberCount = 0",
    "Next:numberShowEvent = 0",
    "Next:numberShowInfo = 0",
    "Next:numberShowProcess = 0",
    "Check:event = on",
    # CMS's Pythia 8 common settings: particles with c*tau > 10 mm (K0S, Lambda, Sigma, Xi, Omega) reach the
    # detector undecayed, as in Delphes samples; the calorimeter model deposits K0S / Lambda energy 30% ECAL / 70% HCAL
    "ParticleDecays:limitTau0 = on",
    "ParticleDecays:tau0Max = 10.",
)
_Z_TO_NUNU = ("WeakZ0:gmZmode = 2", "23:onMode = off", "23:onIfAny = 12 14 16")
_W_TO_QQ = ("24:onMode = off", "24:onIfAny = 1 2 3 4 5")
_W_TO_LNU = ("24:onMode = off", "24:onIfAny = 11 13")
_ZH = ("HiggsSM:ffbar2HZ = on", *_Z_TO_NUNU, "25:onMode = off")
_TTBAR = ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on")


@dataclass(frozen=True)
class ClassSpec:
    """One JetClass class: its Pythia process card and what a matched jet must contain."""

    name: str  # short name, e.g. "Hbb"; the ROOT label is label_<name>
    file_prefix: str  # JetClass file-name stem, e.g. "HToBB"
    process: str  # human-readable description of the hard process
    settings: tuple[str, ...]  # Pythia settings of the process and the forced decays
    resonance: int = 0  # |PDG id| of the resonance whose decay forms the jet (0: QCD)
    n_partons: int = 0  # quarks/gluons expected among the resonance's visible decay products
    n_leptons: int = 0  # charged leptons (e, mu, tau) expected among them
    # A second Pythia instance, used for every other event, to symmetrise charge-forced decays.
    alt_settings: tuple[str, ...] = ()


CLASS_SPECS: dict[str, ClassSpec] = {
    s.name: s
    for s in (
        ClassSpec(
            "QCD",
            "ZJetsToNuNu",
            "Z(->nunu) + jet (q qbar -> Z g, q g -> Z q); every jet in the window is kept",
            ("WeakBosonAndParton:qqbar2gmZg = on", "WeakBosonAndParton:qg2gmZq = on", *_Z_TO_NUNU),
        ),
        ClassSpec("Hbb", "HToBB", "Z(->nunu) H, H -> b bbar", (*_ZH, "25:onIfMatch = 5 -5"), 25, 2, 0),
        ClassSpec("Hcc", "HToCC", "Z(->nunu) H, H -> c cbar", (*_ZH, "25:onIfMatch = 4 -4"), 25, 2, 0),
        ClassSpec("Hgg", "HToGG", "Z(->nunu) H, H -> g g", (*_ZH, "25:onIfMatch = 21 21"), 25, 2, 0),
        ClassSpec(
            "H4q", "HToWW4Q", "Z(->nunu) H, H -> W W* -> 4q", (*_ZH, "25:onIfMatch = 24 -24", *_W_TO_QQ), 25, 4, 0
        ),
        ClassSpec(
            "Hqql",
            "HToWW2Q1L",
            "Z(->nunu) H, H -> W W* -> l nu q q' (l = e, mu); W+ / W- alternate as the leptonic one",
            (*_ZH, "25:onIfMatch = 24 -24", "24:onMode = off", "24:onPosIfAny = 1 2 3 4 5", "24:onNegIfAny = 11 13"),
            25,
            2,
            1,
            alt_settings=(
                *_ZH,
                "25:onIfMatch = 24 -24",
                "24:onMode = off",
                "24:onPosIfAny = 11 13",
                "24:onNegIfAny = 1 2 3 4 5",
            ),
        ),
        ClassSpec(
            "Zqq",
            "ZToQQ",
            "Z Z, each Z -> q qbar or nu nubar (hadronic Z jets are kept)",
            (
                "WeakDoubleBoson:ffbar2gmZgmZ = on",
                "WeakZ0:gmZmode = 2",
                "23:onMode = off",
                "23:onIfAny = 1 2 3 4 5 12 14 16",
            ),
            23,
            2,
            0,
        ),
        ClassSpec(
            "Wqq",
            "WToQQ",
            "Z(->nunu) W, W -> q qbar'",
            ("WeakDoubleBoson:ffbar2ZW = on", *_Z_TO_NUNU, *_W_TO_QQ),
            24,
            2,
            0,
        ),
        ClassSpec("Tbqq", "TTBar", "t tbar, both t -> b W(-> q qbar')", (*_TTBAR, *_W_TO_QQ), 6, 3, 0),
        ClassSpec("Tbl", "TTBarLep", "t tbar, both t -> b W(-> l nu), l = e, mu", (*_TTBAR, *_W_TO_LNU), 6, 1, 1),
    )
}


@dataclass(frozen=True)
class JetSelection:
    """Jet definition and the kinematic window of accepted jets."""

    pt_min: float = 500.0
    pt_max: float = 1000.0
    eta_max: float = 2.0
    radius: float = 0.8
    match_radius: float = 0.8  # resonance and all its visible decay products within this dR of the jet axis
    sd_beta: float = 0.0
    sd_zcut: float = 0.1


@dataclass
class GeneratorStats:
    """Counters of one generator instance (events tried, jets in window, jets kept, seconds)."""

    events: int = 0
    jets_in_window: int = 0
    jets_kept: int = 0
    seconds: float = 0.0
    extra: dict[str, int] = field(default_factory=dict)


def derive_seed(seed: int, *parts: object) -> int:
    """A Pythia-valid seed in [1, 900_000_000] derived deterministically from ``seed`` and ``parts``."""
    text = ":".join(str(p) for p in (seed, *parts))
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return 1 + digest % (_PYTHIA_SEED_MAX - 1)


def pthat_window(selection: JetSelection) -> tuple[float, float]:
    """pTHat range of the hard process that fills the jet window efficiently (see docs/physics.md)."""
    return 0.9 * selection.pt_min, 1.25 * selection.pt_max


def make_pythia(settings: tuple[str, ...], seed: int, selection: JetSelection):  # -> pythia8mc.Pythia
    """Initialise a quiet Pythia instance for one process card and seed."""
    import pythia8mc

    lo, hi = pthat_window(selection)
    pythia = pythia8mc.Pythia("", False)
    lines = (
        *_COMMON_SETTINGS,
        *settings,
        f"PhaseSpace:pTHatMin = {lo:.3f}",
        f"PhaseSpace:pTHatMax = {hi:.3f}",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
    )
    for line in lines:
        if not pythia.readString(line):
            raise RuntimeError(f"Pythia rejected the setting {line!r}")
    if not pythia.init():
        raise RuntimeError(f"Pythia failed to initialise with settings {settings}")
    return pythia


# ----------------------------------------------------------------------------------------------------------
# Flat event batches
# ----------------------------------------------------------------------------------------------------------


@dataclass
class EventBatch:
    """A batch of Pythia events as flat numpy arrays; ``offsets[i]:offsets[i+1]`` is event i's record."""

    offsets: np.ndarray
    pid: np.ndarray
    status: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    vz: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.offsets) - 1


def _field(layout, name: str, lo: int, hi: int, dtype) -> np.ndarray:
    return np.asarray(layout.content(name).data[lo:hi], dtype=dtype)


def batch_from_awkward(events: ak.Array) -> EventBatch:
    """Flatten ``Pythia.nextBatch`` output into an :class:`EventBatch` (via layouts: high-level ak ops are slow).

    Particles without a production vertex (``vProd`` is None) are at the origin.
    """
    lists = ak.to_layout(events.prt)
    if not (isinstance(lists, ak.contents.ListOffsetArray) and isinstance(lists.content, ak.contents.RecordArray)):
        lists = ak.to_layout(ak.to_packed(events.prt))  # e.g. after ak.concatenate: make it contiguous
    raw = np.asarray(lists.offsets.data, dtype=np.int64)
    lo, hi = int(raw[0]), int(raw[-1])
    rec = lists.content
    mom = rec.content("p")
    vprod = rec.content("vProd")
    if isinstance(vprod, ak.contents.IndexedOptionArray):
        index = np.asarray(vprod.index.data[lo:hi], dtype=np.int64)
        vrec = vprod.content
        has = index >= 0
        safe = np.where(has, index, 0)

        def vcoord(name: str) -> np.ndarray:
            data = np.asarray(vrec.content(name).data, dtype=np.float64)
            return np.where(has, data[safe], 0.0) if len(data) else np.zeros(hi - lo)
    else:  # a plain (or other option) layout: go through the high-level API

        def vcoord(name: str) -> np.ndarray:
            arr = ak.fill_none(ak.flatten(events.prt.vProd[name]), 0.0)
            return ak.to_numpy(arr).astype(np.float64)

    return EventBatch(
        offsets=raw - lo,
        pid=_field(rec, "id", lo, hi, np.int32),
        status=_field(rec, "status", lo, hi, np.int32),
        d1=_field(rec, "daughter1", lo, hi, np.int32),
        d2=_field(rec, "daughter2", lo, hi, np.int32),
        px=_field(mom, "px", lo, hi, np.float64),
        py=_field(mom, "py", lo, hi, np.float64),
        pz=_field(mom, "pz", lo, hi, np.float64),
        e=_field(mom, "e", lo, hi, np.float64),
        vx=vcoord("px"),
        vy=vcoord("py"),
        vz=vcoord("pz"),
    )


# ----------------------------------------------------------------------------------------------------------
# Detector model
# ----------------------------------------------------------------------------------------------------------


class ChargeTable:
    """PDG id -> electric charge, cached from Pythia's particle data."""

    def __init__(self, particle_data) -> None:
        self._pdata = particle_data
        self._cache: dict[int, float] = {}

    def __call__(self, pid: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(pid, return_inverse=True)
        for u in uniq.tolist():
            if u not in self._cache:
                self._cache[u] = float(self._pdata.charge(u))
        return np.array([self._cache[u] for u in uniq.tolist()], dtype=np.float64)[inv]


def _eta(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    pt = np.hypot(px, py)
    return np.arcsinh(np.divide(pz, pt, out=np.full_like(pz, np.sign(pz) * 1e6 + 0.0), where=pt > 0))


def stable_particles(batch: EventBatch, charges: ChargeTable) -> StableParticles:
    """Final-state visible particles of a batch (neutrinos removed), with their event index and charge."""
    event_of = np.repeat(np.arange(batch.n_events), np.diff(batch.offsets))
    idx = np.nonzero((batch.status > 0) & ~np.isin(np.abs(batch.pid), _NEUTRINOS))[0]
    pid = batch.pid[idx]
    return StableParticles(
        event=event_of[idx], pid=pid, charge=charges(pid), px=batch.px[idx], py=batch.py[idx], pz=batch.pz[idx],
        e=batch.e[idx], vx=batch.vx[idx], vy=batch.vy[idx], vz=batch.vz[idx],
    )  # fmt: skip


def apply_detector(
    batch: EventBatch, charges: ChargeTable, det: DetectorConfig, rng: np.random.Generator
) -> RecoParticles:
    """The detector stage of data/detector.py (Delphes CMS card model) on the visible particles of a batch."""
    return simulate(stable_particles(batch, charges), det, rng)


# ----------------------------------------------------------------------------------------------------------
# Truth: resonances and their visible decay products
# ----------------------------------------------------------------------------------------------------------


def _daughters(i: int, d1: np.ndarray, d2: np.ndarray) -> list[int]:
    """Pythia's daughter convention: a range d1..d2, a single d1 (d2 == 0), or two d1, d2 (d2 < d1)."""
    a, b = int(d1[i]), int(d2[i])
    if a <= 0:
        return []
    if b == 0 or b == a:
        return [a]
    if b > a:
        return list(range(a, b + 1))
    return [a, b]


def _last_copy(i: int, pid: np.ndarray, d1: np.ndarray, d2: np.ndarray) -> int:
    """Follow a particle through its recoil/radiation copies to the copy that decays."""
    for _ in range(1000):
        nxt = [k for k in _daughters(i, d1, d2) if pid[k] == pid[i]]
        if not nxt:
            return i
        i = nxt[0]
    return i


def _visible_products(i: int, pid: np.ndarray, d1: np.ndarray, d2: np.ndarray) -> list[int]:
    """Quarks, gluons and charged leptons from the decay of resonance copy ``i``, through W/Z/H/t cascades."""
    out: list[int] = []
    for k in _daughters(i, d1, d2):
        a = abs(int(pid[k]))
        if a in _RESONANCES:
            out.extend(_visible_products(_last_copy(k, pid, d1, d2), pid, d1, d2))
        elif a <= 5 or a == 21 or a in _CHARGED_LEPTONS:
            out.append(k)
    return out


@dataclass(frozen=True)
class TruthObject:
    """A truth object a jet can be matched to: the resonance (or hard parton) and its visible products."""

    pid: int
    pt: float
    eta: float
    phi: float
    prod_eta: np.ndarray
    prod_phi: np.ndarray


def _kin(lo: int, idx: list[int], batch: EventBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    j = lo + np.asarray(idx, dtype=np.int64)
    px, py, pz = batch.px[j], batch.py[j], batch.pz[j]
    return np.hypot(px, py), _eta(px, py, pz), np.arctan2(py, px)


def truth_objects(batch: EventBatch, ev: int, spec: ClassSpec) -> list[TruthObject]:
    """Resonances of the class's type with the expected decay (signal), or the hard outgoing partons (QCD)."""
    lo, hi = int(batch.offsets[ev]), int(batch.offsets[ev + 1])
    # mother/daughter indices are local to the event record (entry 0 is Pythia's system entry)
    pid, d1, d2, st = batch.pid[lo:hi], batch.d1[lo:hi], batch.d2[lo:hi], batch.status[lo:hi]
    objs: list[TruthObject] = []
    if spec.resonance == 0:
        partons = np.nonzero((np.abs(st) == 23) & ((np.abs(pid) <= 5) | (pid == 21)))[0].tolist()
        if partons:
            pt, eta, phi = _kin(lo, partons, batch)
            for n, k in enumerate(partons):
                objs.append(TruthObject(int(pid[k]), pt[n], eta[n], phi[n], eta[n : n + 1], phi[n : n + 1]))
        return objs
    for i in np.nonzero(np.abs(pid) == spec.resonance)[0].tolist():
        if _last_copy(i, pid, d1, d2) != i:
            continue
        prods = _visible_products(i, pid, d1, d2)
        aprod = np.abs(pid[prods]) if prods else np.zeros(0, dtype=np.int32)
        n_lep = int(np.isin(aprod, _CHARGED_LEPTONS).sum())
        if n_lep != spec.n_leptons or len(prods) - n_lep != spec.n_partons:
            continue
        pt, eta, phi = _kin(lo, [i], batch)
        _, peta, pphi = _kin(lo, prods, batch)
        objs.append(TruthObject(int(pid[i]), float(pt[0]), float(eta[0]), float(phi[0]), peta, pphi))
    return objs


def delta_phi(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """phi difference wrapped into [-pi, pi)."""
    return (np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi


def match_jet(eta: float, phi: float, objs: list[TruthObject], spec: ClassSpec, radius: float):
    """Return (truth object, matched?) for a jet; signal needs the resonance and all products within radius."""
    best, best_dr = None, math.inf
    for o in objs:
        dr = math.hypot(eta - o.eta, float(delta_phi(phi, o.phi)))
        if dr < best_dr:
            best, best_dr = o, dr
    if best is None:
        return None, False
    if spec.resonance == 0:
        return best, best_dr < radius
    dr_prod = np.hypot(eta - best.prod_eta, delta_phi(phi, best.prod_phi))
    return best, bool(best_dr < radius and np.all(dr_prod < radius))


# ----------------------------------------------------------------------------------------------------------
# Substructure
# ----------------------------------------------------------------------------------------------------------


def softdrop_mass(
    px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, *, beta: float, zcut: float, r0: float
) -> float:
    """Soft-drop mass: recluster with C/A, walk the harder branch until pT2/(pT1+pT2) > zcut (dR/R0)^beta."""
    parts = [fj.PseudoJet(*v) for v in zip(px.tolist(), py.tolist(), pz.tolist(), e.tolist(), strict=True)]
    if not parts:
        return 0.0
    cs = fj.ClusterSequence(parts, fj.JetDefinition(fj.cambridge_algorithm, 1000.0))
    jet = fj.sorted_by_pt(cs.inclusive_jets())[0]
    p1, p2 = fj.PseudoJet(), fj.PseudoJet()
    while jet.has_parents(p1, p2):
        if p1.pt() < p2.pt():
            p1, p2 = p2, p1
        z = p2.pt() / (p1.pt() + p2.pt())
        if z > zcut * (p1.delta_R(p2) / r0) ** beta:
            break
        jet, p1, p2 = p1, fj.PseudoJet(), fj.PseudoJet()
    return float(max(jet.m(), 0.0))


def nsubjettiness(jets: ak.Array, *, r0: float) -> np.ndarray:
    """tau_1..tau_4 (beta=1, normalised measure R0, exclusive-kT axes; fastjet-contrib Nsubjettiness).

    ``jets`` holds one list of constituent 4-vectors (Momentum4D: px, py, pz, E) per jet; returns (n_jets, 4).
    """
    if len(jets) == 0:
        return np.zeros((0, 4))
    cs = fj.ClusterSequence(jets, fj.JetDefinition(fj.cambridge_algorithm, 1000.0))
    tau = cs.njettiness(njets=[1, 2, 3, 4], beta=1.0, R0=r0, axes_definition="KT_Axes")
    out = ak.to_numpy(tau).astype(np.float64)
    # fewer constituents than axes: tau_N is zero by definition
    n = ak.to_numpy(ak.num(jets))
    out[n[:, None] <= np.arange(4)[None, :]] = 0.0
    return np.nan_to_num(out)


# ----------------------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------------------

PARTICLE_FLOAT_BRANCHES = (
    "part_px", "part_py", "part_pz", "part_energy", "part_deta", "part_dphi",
    "part_d0val", "part_d0err", "part_dzval", "part_dzerr", "part_charge",
)  # fmt: skip
PARTICLE_INT_BRANCHES = (
    "part_isChargedHadron", "part_isNeutralHadron", "part_isPhoton", "part_isElectron", "part_isMuon",
)  # fmt: skip
JET_FLOAT_BRANCHES = (
    "jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles", "jet_sdmass",
    "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4",
    "aux_genpart_eta", "aux_genpart_phi", "aux_genpart_pid", "aux_genpart_pt", "aux_truth_match",
)  # fmt: skip


@dataclass
class JetBlock:
    """Accepted jets: per-jet scalars (dict of 1-D arrays) and flat per-particle arrays with counts."""

    jets: dict[str, np.ndarray]
    particles: dict[str, np.ndarray]
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.counts)


def concat_blocks(blocks: list[JetBlock], limit: int | None = None) -> JetBlock:
    """Concatenate blocks, keeping at most ``limit`` jets (the first ones, in generation order)."""
    jets = {k: np.concatenate([b.jets[k] for b in blocks]) for k in JET_FLOAT_BRANCHES}
    parts = {k: np.concatenate([b.particles[k] for b in blocks]) for k in blocks[0].particles}
    counts = np.concatenate([b.counts for b in blocks])
    if limit is not None and limit < len(counts):
        n_part = int(counts[:limit].sum())
        jets = {k: v[:limit] for k, v in jets.items()}
        parts = {k: v[:n_part] for k, v in parts.items()}
        counts = counts[:limit]
    return JetBlock(jets, parts, counts)


def momentum_lists(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, counts: np.ndarray) -> ak.Array:
    """Jagged Momentum4D records (px, py, pz, E) built directly from flat arrays (ak.unflatten is slow)."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    fields = [ak.contents.NumpyArray(np.ascontiguousarray(x, dtype=np.float64)) for x in (px, py, pz, e)]
    record = ak.contents.RecordArray(fields, ["px", "py", "pz", "E"], parameters={"__record__": "Momentum4D"})
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), record))


def _cluster(reco: RecoParticles, n_events: int, radius: float, pt_min: float):
    """Anti-kT on every event of the batch at once; returns jets (awkward) and constituent indices (per event)."""
    counts = np.bincount(reco.event, minlength=n_events)
    vec = momentum_lists(reco.px, reco.py, reco.pz, reco.e, counts)
    cs = fj.ClusterSequence(vec, fj.JetDefinition(fj.antikt_algorithm, radius))
    return cs.inclusive_jets(min_pt=pt_min), cs.constituent_index(min_pt=pt_min), counts


JetRow = tuple[int, TruthObject | None, bool]  # (jet index in the batch, truth object, matched?)


@dataclass
class ClusteredJets:
    """All anti-kT jets of a batch (flat) and their constituents' indices into the batch's reco particles."""

    pt: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    energy: np.ndarray
    event: np.ndarray
    cidx_flat: np.ndarray  # constituent indices local to their event, all jets concatenated
    cidx_off: np.ndarray  # jet j's constituents are cidx_flat[cidx_off[j]:cidx_off[j + 1]]
    ev_offsets: np.ndarray  # first reco particle of each event

    def constituents(self, j: int) -> np.ndarray:
        """Indices into the batch's reco particles of jet ``j``'s constituents."""
        return self.ev_offsets[int(self.event[j])] + self.cidx_flat[self.cidx_off[j] : self.cidx_off[j + 1]]


def cluster_jets(reco: RecoParticles, n_events: int, sel: JetSelection) -> ClusteredJets:
    """Anti-kT on every event of the batch at once, flattened to per-jet arrays."""
    jets, cidx, counts = _cluster(reco, n_events, sel.radius, sel.pt_min)
    jpx, jpy = ak.to_numpy(ak.flatten(jets.px)), ak.to_numpy(ak.flatten(jets.py))
    jpz, je = ak.to_numpy(ak.flatten(jets.pz)), ak.to_numpy(ak.flatten(jets.E))
    cidx_jets = ak.flatten(cidx, axis=1)
    return ClusteredJets(
        pt=np.hypot(jpx, jpy),
        eta=_eta(jpx, jpy, jpz),
        phi=np.arctan2(jpy, jpx),
        energy=je,
        event=np.repeat(np.arange(n_events), ak.to_numpy(ak.num(jets.px))),
        cidx_flat=ak.to_numpy(ak.flatten(cidx_jets)).astype(np.int64),
        cidx_off=np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(cidx_jets)))]),
        ev_offsets=np.concatenate([[0], np.cumsum(counts)]),
    )


_PARTICLE_FROM_RECO = {
    "part_d0val": "d0", "part_d0err": "d0err", "part_dzval": "dz", "part_dzerr": "dzerr", "part_charge": "charge",
    "part_isChargedHadron": "is_ch_had", "part_isNeutralHadron": "is_neu_had", "part_isPhoton": "is_photon",
    "part_isElectron": "is_electron", "part_isMuon": "is_muon",
}  # fmt: skip


def _append_jet(
    cols: dict[str, list[np.ndarray]], jet_cols: dict[str, list[float]], row: JetRow, cj: ClusteredJets,
    reco: RecoParticles, sel: JetSelection,
) -> int:  # fmt: skip
    """Append one jet's particle columns (sorted by pT) and scalars; returns its number of particles."""
    j, obj, matched = row
    idx = cj.constituents(j)
    order = np.argsort(-np.hypot(reco.px[idx], reco.py[idx]), kind="stable")
    idx = idx[order]
    cpx, cpy, cpz, ce = reco.px[idx], reco.py[idx], reco.pz[idx], reco.e[idx]
    for key, value in (("part_px", cpx), ("part_py", cpy), ("part_pz", cpz), ("part_energy", ce)):
        cols[key].append(value)
    cols["part_deta"].append(_eta(cpx, cpy, cpz) - cj.eta[j])
    cols["part_dphi"].append(delta_phi(np.arctan2(cpy, cpx), cj.phi[j]))
    for key, attr in _PARTICLE_FROM_RECO.items():
        cols[key].append(getattr(reco, attr)[idx])
    scalars = {
        "jet_pt": cj.pt[j], "jet_eta": cj.eta[j], "jet_phi": cj.phi[j], "jet_energy": cj.energy[j],
        "jet_nparticles": len(idx),
        "jet_sdmass": softdrop_mass(cpx, cpy, cpz, ce, beta=sel.sd_beta, zcut=sel.sd_zcut, r0=sel.radius),
        "aux_genpart_eta": obj.eta if obj else 0.0, "aux_genpart_phi": obj.phi if obj else 0.0,
        "aux_genpart_pid": obj.pid if obj else 0.0, "aux_genpart_pt": obj.pt if obj else 0.0,
        "aux_truth_match": 1.0 if matched else 0.0,
    }  # fmt: skip
    for key, value in scalars.items():
        jet_cols[key].append(value)
    return len(idx)


class JetGenerator:
    """Generates jets of one class from one seed: Pythia -> detector -> anti-kT -> matching -> features."""

    def __init__(
        self,
        spec: ClassSpec,
        seed: int,
        *,
        selection: JetSelection | None = None,
        detector: DetectorConfig | None = None,
    ) -> None:
        self.spec = spec
        self.selection = selection or JetSelection()
        self.detector = detector or DetectorConfig()
        self.pythias = [make_pythia(spec.settings, derive_seed(seed, "pythia", 0), self.selection)]
        if spec.alt_settings:
            self.pythias.append(make_pythia(spec.alt_settings, derive_seed(seed, "pythia", 1), self.selection))
        self.charges = ChargeTable(self.pythias[0].particleData)
        self.rng = np.random.default_rng(derive_seed(seed, "detector"))
        self.stats = GeneratorStats()
        self._turn = 0

    def next_events(self, n_events: int) -> EventBatch:
        """Generate ``n_events`` events (alternating Pythia instances in chunks when there are two)."""
        if len(self.pythias) == 1:
            return batch_from_awkward(self.pythias[0].nextBatch(n_events))
        half = [n_events // 2 + n_events % 2, n_events // 2]
        parts = []
        for k in range(2):
            inst = self.pythias[(self._turn + k) % 2]
            if half[k]:
                parts.append(inst.nextBatch(half[k]))
        self._turn = (self._turn + 1) % 2
        return batch_from_awkward(ak.concatenate(parts))

    def process(self, batch: EventBatch) -> JetBlock:
        """Detector simulation, clustering, selection, truth matching and features of one event batch."""
        sel = self.selection
        reco = apply_detector(batch, self.charges, self.detector, self.rng)
        cj = cluster_jets(reco, batch.n_events, sel)
        window = (cj.pt > sel.pt_min) & (cj.pt < sel.pt_max) & (np.abs(cj.eta) < sel.eta_max)
        self.stats.events += batch.n_events
        self.stats.jets_in_window += int(window.sum())
        rows = self._matched_rows(batch, cj, window)
        if not rows:
            return _empty_block()
        cols: dict[str, list[np.ndarray]] = {k: [] for k in (*PARTICLE_FLOAT_BRANCHES, *PARTICLE_INT_BRANCHES)}
        jet_cols: dict[str, list[float]] = {k: [] for k in JET_FLOAT_BRANCHES}
        npart = [_append_jet(cols, jet_cols, row, cj, reco, sel) for row in rows]
        counts_out = np.asarray(npart, dtype=np.int64)
        # stored at output precision (float32 / int32) to halve the memory of large files
        particles = {k: np.concatenate(v).astype(np.float32) for k, v in cols.items() if k in PARTICLE_FLOAT_BRANCHES}
        particles.update({k: np.concatenate(v).astype(np.int32) for k, v in cols.items() if k in PARTICLE_INT_BRANCHES})
        vec = momentum_lists(
            particles["part_px"], particles["part_py"], particles["part_pz"], particles["part_energy"], counts_out
        )
        tau = nsubjettiness(vec, r0=sel.radius)
        for n in range(4):
            jet_cols[f"jet_tau{n + 1}"] = list(tau[:, n])
        jets_out = {k: np.asarray(v, dtype=np.float64) for k, v in jet_cols.items()}
        self.stats.jets_kept += len(rows)
        return JetBlock(jets_out, particles, counts_out)

    def _matched_rows(self, batch: EventBatch, cj: ClusteredJets, window: np.ndarray) -> list[JetRow]:
        """Jets in the window with their truth object; unmatched signal jets are dropped (QCD keeps all)."""
        rows: list[JetRow] = []
        truth_cache: dict[int, list[TruthObject]] = {}
        for j in np.nonzero(window)[0].tolist():
            ev = int(cj.event[j])
            if ev not in truth_cache:
                truth_cache[ev] = truth_objects(batch, ev, self.spec)
            obj, matched = match_jet(
                float(cj.eta[j]), float(cj.phi[j]), truth_cache[ev], self.spec, self.selection.match_radius
            )
            if self.spec.resonance != 0 and not matched:
                continue
            rows.append((j, obj, matched))
        return rows

    def generate(self, n_jets: int, *, on_progress: Callable[[int], None] | None = None) -> JetBlock:
        """Generate exactly ``n_jets`` accepted jets (the first ones in event order)."""
        if n_jets <= 0:
            raise ValueError(f"n_jets must be positive, got {n_jets}")
        t0 = time.perf_counter()
        blocks: list[JetBlock] = []
        have = 0
        while have < n_jets:
            # expected jets per event from what was seen so far; batches of 8..64 events
            rate = (self.stats.jets_kept + 1) / (self.stats.events + 2)
            n_ev = int(np.clip(math.ceil(1.1 * (n_jets - have) / rate), 8, 64))
            block = self.process(self.next_events(n_ev))
            if len(block):
                blocks.append(block)
                new = min(len(block), n_jets - have)
                have += len(block)
                if on_progress is not None:
                    on_progress(new)
            if self.stats.events > 2000 and self.stats.jets_kept == 0:
                raise RuntimeError(
                    f"{self.spec.name}: no jet accepted in {self.stats.events} events; check pt_range/eta_max"
                )
        self.stats.seconds += time.perf_counter() - t0
        return concat_blocks(blocks, limit=n_jets)


def _empty_block() -> JetBlock:
    return JetBlock(
        {k: np.zeros(0) for k in JET_FLOAT_BRANCHES},
        {k: np.zeros(0) for k in (*PARTICLE_FLOAT_BRANCHES, *PARTICLE_INT_BRANCHES)},
        np.zeros(0, dtype=np.int64),
    )
