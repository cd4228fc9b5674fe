"""Particle geometry for transformers: positional encodings and local-attention masks.

ParT's inputs are a set, and weaver's ``SequenceTrimmer`` shuffles the particles during training, so "position"
is always derived from the particles themselves, never from the storage index:
- the *sequence* position is the rank in descending pT (computed from ``pf_vectors``), so it survives shuffling;
- the *spatial* position is (eta, phi) relative to the jet axis (the sum of the particle four-vectors), which is
  what ``pf_points`` holds (``part_deta``, ``part_dphi``) in the JetClass data configs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FourierFeatures",
    "PosEncoding",
    "PositionalEncoding",
    "eta_phi",
    "local_attention_mask",
    "pt_rank",
    "sinusoidal",
    "sinusoidal_2d",
]

Tensor = torch.Tensor
PosEncoding = Literal["none", "sequence", "eta_phi", "fourier"]


def pt_rank(v: Tensor, mask: Tensor) -> Tensor:
    """Rank (0 = hardest) of each particle in descending pT; padded particles rank after all real ones.

    v: (B, 4, L) (px, py, pz, E); mask: (B, 1, L), nonzero for real particles. Returns float (B, L).
    """
    pt = (v[:, 0].square() + v[:, 1].square()).sqrt().masked_fill(~mask[:, 0].bool(), -1.0)
    # rank_i = #{j: pt_j > pt_i} + #{j < i: pt_j == pt_i}; pairwise counting (L <= 128) exports to ONNX, sort does not
    index = torch.arange(pt.size(-1), device=pt.device)
    ahead = (pt[:, None, :] > pt[:, :, None]) | ((pt[:, None, :] == pt[:, :, None]) & (index[None, :] < index[:, None]))
    return ahead.to(v.dtype).sum(dim=-1)


def _asinh(x: Tensor) -> Tensor:
    """asinh written with log/sqrt (the ONNX exporter lacks aten::asinh); symmetric form avoids cancellation."""
    ax = x.abs()
    return torch.sign(x) * torch.log(ax + torch.sqrt(ax * ax + 1.0))


def eta_phi(v: Tensor, mask: Tensor) -> Tensor:
    """(delta eta, delta phi) of each particle to the jet axis (sum of real four-vectors): (B, L, 2), 0 for padding."""
    real = mask[:, 0].bool()
    v = v.masked_fill(~real[:, None], 0.0)
    px, py, pz = v[:, 0], v[:, 1], v[:, 2]
    pt = (px.square() + py.square()).sqrt().clamp(min=1e-8)
    eta = _asinh(pz / pt)
    phi = torch.atan2(py, px)
    jet = v.sum(dim=-1)  # (B, 4)
    jet_pt = (jet[:, 0].square() + jet[:, 1].square()).sqrt().clamp(min=1e-8)
    deta = eta - _asinh(jet[:, 2] / jet_pt)[:, None]
    dphi = torch.remainder(phi - torch.atan2(jet[:, 1], jet[:, 0])[:, None] + math.pi, 2 * math.pi) - math.pi
    return torch.stack((deta, dphi), dim=-1).masked_fill(~real[..., None], 0.0)


def sinusoidal(positions: Tensor, dim: int, *, base: float = 10_000.0) -> Tensor:
    """Transformer sin/cos encoding of real-valued positions: (...,) -> (..., dim); ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dimension, got {dim}")
    freqs = torch.exp(-math.log(base) * torch.arange(0, dim, 2, device=positions.device, dtype=positions.dtype) / dim)
    angles = positions[..., None] * freqs
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def sinusoidal_2d(coords: Tensor, dim: int, *, resolution: float = 0.01) -> Tensor:
    """2D sin/cos encoding of (eta, phi): half the channels per coordinate; ``dim`` must be a multiple of 4.

    Coordinates are divided by ``resolution`` (0.01 in eta/phi is about the calorimeter granularity).
    """
    if dim % 4:
        raise ValueError(f"2D sinusoidal encoding needs a dimension divisible by 4, got {dim}")
    scaled = coords / resolution
    return torch.cat((sinusoidal(scaled[..., 0], dim // 2), sinusoidal(scaled[..., 1], dim // 2)), dim=-1)


class FourierFeatures(nn.Module):
    """Random Fourier features of (eta, phi) (Tancik et al. 2020): fixed Gaussian frequencies, learned projection."""

    def __init__(self, dim: int, *, num_features: int = 32, scale: float = 10.0, in_dim: int = 2) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(in_dim, num_features) * scale)
        self.proj = nn.Linear(2 * num_features, dim)

    def forward(self, coords: Tensor) -> Tensor:
        angles = 2 * math.pi * coords @ self.freqs
        return self.proj(torch.cat((angles.sin(), angles.cos()), dim=-1))


class PositionalEncoding(nn.Module):
    """Adds a positional encoding (B, L, E) computed from the four-vectors; padded particles get zeros."""

    def __init__(self, kind: PosEncoding, dim: int, *, fourier_features: int = 32, fourier_scale: float = 10.0) -> None:
        super().__init__()
        if kind not in ("sequence", "eta_phi", "fourier"):
            raise ValueError(f"unknown pos_encoding {kind!r}; valid: 'none', 'sequence', 'eta_phi', 'fourier'")
        self.kind = kind
        self.dim = dim
        self.fourier = FourierFeatures(dim, num_features=fourier_features, scale=fourier_scale) \
            if kind == "fourier" else None
        if kind == "sequence":
            sinusoidal(torch.zeros(1), dim)  # validates dim
        elif kind == "eta_phi":
            sinusoidal_2d(torch.zeros(1, 2), dim)

    def forward(self, v: Tensor, mask: Tensor) -> Tensor:
        """v: (B, 4, L); mask: (B, 1, L). Returns (B, L, E)."""
        if self.kind == "sequence":
            enc = sinusoidal(pt_rank(v, mask), self.dim)
        elif self.kind == "eta_phi":
            enc = sinusoidal_2d(eta_phi(v, mask), self.dim)
        else:
            enc = self.fourier(eta_phi(v, mask))
        return enc.masked_fill(~mask[:, 0].bool()[..., None], 0.0)


def local_attention_mask(v: Tensor, mask: Tensor, *, window: int = 0, knn: int = 0) -> Tensor | None:
    """Additive (B, 1, L, L) mask (0 = allowed, -inf = blocked) restricting each particle's attention.

    ``window`` > 0: only particles within +-window in pT rank; ``knn`` > 0: only the ``knn`` nearest particles in
    (eta, phi) (itself included). Both set: the intersection (itself always allowed). Rows of padded particles are
    left open so no softmax row is empty. None when both are 0.
    """
    if window < 0 or knn < 0:
        raise ValueError(f"attn_window and attn_knn must be >= 0, got {window} and {knn}")
    if window == 0 and knn == 0:
        return None
    real = mask[:, 0].bool()
    length = real.size(-1)
    allowed = torch.ones(real.size(0), length, length, dtype=torch.bool, device=v.device)
    if window > 0:
        rank = pt_rank(v, mask)
        allowed = allowed & ((rank[:, :, None] - rank[:, None, :]).abs() <= window)
    if knn > 0:
        coords = eta_phi(v, mask)
        dist = torch.cdist(coords, coords).masked_fill(~real[:, None, :], float("inf"))
        dist = F.pad(dist, (0, knn), value=float("inf"))  # >= knn columns for any length (ONNX-traceable)
        nearest = dist.topk(knn, dim=-1, largest=False).indices
        near = torch.zeros_like(dist).scatter(-1, nearest, torch.ones_like(nearest, dtype=dist.dtype))
        allowed = allowed & (near[..., :length] > 0) & real[:, None, :]
    index = torch.arange(length, device=v.device)
    allowed = allowed | (index[:, None] == index[None, :])  # itself (not torch.eye: EyeLike lacks a bool ONNX kernel)
    allowed = allowed | ~real[:, :, None]  # padded query rows: unrestricted
    additive = torch.zeros(allowed.shape, dtype=v.dtype, device=v.device).masked_fill(~allowed, float("-inf"))
    return additive[:, None]
