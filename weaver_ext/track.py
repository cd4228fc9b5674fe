"""Muon-track regression on detector hits: a hit transformer (ParT blocks with x,y,z,t pair features) and its loss.

The model is weaver_ext's ParT (softmax attention by default, any registered kind with ``-o attention``, e.g. DSA
with ``attention='dsa'``, and Perceiver latents with ``latent_tokens``) run on PMT hits instead of particles:
``hit_points`` (x, y, z, ct) are the pair four-vectors (weaver-core's ``pairwise_lv_fts_xyzt``: log distance, angle,
asinh(dt), dx, dy, dz) and ``hit_features`` the per-hit inputs. The output is (batch, 6) = (entry point / R,
direction) as in data/Tracks/tracks.yaml. Two heads: ``mlp`` (pooled token -> 6 numbers) and ``pointer`` (two
attention-pooled hit centroids, "where the muon entered" and "where it left", projected onto the unit sphere; the
chord between them is the direction; plus the MLP as a zero-initialised residual). See docs/tracks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .bucketed import bucket_context, length_buckets
from .config import from_options
from .context import ForwardContext
from .network import check_inputs
from .part import ParticleTransformer
from .part_config import ParTConfig, upgrade_options, version_defaults

__all__ = ["NUM_TARGETS", "TRACK_DEFAULTS", "TRACK_INPUTS", "HitPointerHead", "HitTracker", "TrackConfig",
           "TrackLoss", "TrackOptions", "TrackTransformer", "build_track_config", "build_track_loss",
           "build_track_model", "check_track_inputs", "match_target_shape", "rotate_about_z", "select_hits",
           "track_model_info"]

Tensor = torch.Tensor

TRACK_INPUTS = ("hit_points", "hit_features", "hit_mask")
NUM_TARGETS = 6  # (x0, y0, z0) / R and (dx, dy, dz)


# ParT options with defaults for ~1000 hits on a CPU (a preset, not a subclass)
TRACK_DEFAULTS: dict[str, Any] = {
    "embed_dims": (64, 64),
    "pair_input_type": "xyzt:rect",  # weaver-core's x,y,z,t pair features with dx, dy, dz
    "pair_embed_dims": (32, 32),
    "num_heads": 4,
    "num_layers": 3,
    "num_cls_layers": 1,
    "dropout": 0.0,
    "attn_dropout": 0.0,
    "activation_dropout": 0.0,
    "trim": False,  # the wrapper trims padding itself (ParT's trimmer also cuts real elements when training)
    "dsa_mode": "indexer",  # with attention='dsa': memory N x topk
    "topk": 64,
}


@dataclass(frozen=True)
class TrackOptions:
    """What the hit transformer adds to ParT: hit selection, the head, augmentation and the loss weights."""

    max_hits: int = 0  # > 0: keep only the max_hits highest-charge hits of each event (cheaper training)
    hit_buckets: int = 4  # groups of similar hit count per batch, each cut to its own longest event (1 = pad all)
    charge_feature: str = "hit_logq"  # hit_features variable used to rank hits for max_hits
    track_head: Literal["pointer", "mlp"] = "pointer"
    augment_azimuth: bool = True  # training only: rotate each event by a random angle about z (exact symmetry)
    position_weight: float = 1.0  # loss: weight of the squared entry-point distance (units of R)
    direction_weight: float = 2.0  # loss: weight of 1 - cos(angle) between predicted and true direction


@dataclass(frozen=True)
class TrackConfig:
    """Hit-transformer options: the ParT model's (with ``TRACK_DEFAULTS``) and the track ones."""

    model: ParTConfig = field(default_factory=ParTConfig)
    track: TrackOptions = field(default_factory=TrackOptions)

    def __post_init__(self) -> None:
        track, model = self.track, self.model
        if track.max_hits < 0:
            raise ValueError(f"track option max_hits={track.max_hits} must be >= 0 (0 = keep all hits)")
        if track.hit_buckets < 1:
            raise ValueError(f"track option hit_buckets={track.hit_buckets} must be >= 1 (1 = one padded group)")
        if track.position_weight < 0 or track.direction_weight < 0:
            raise ValueError("track options position_weight and direction_weight must be >= 0")
        if model.inference.trim:
            raise ValueError("track option trim=True is not supported: the wrapper removes padding itself and "
                             "ParT's trimmer would reorder hits under the pointer head")
        if model.head.num_classes != NUM_TARGETS:
            raise ValueError(f"the track model predicts {NUM_TARGETS} numbers, "
                             f"got num_classes={model.head.num_classes}")


def build_track_config(data_config: Any, options: dict[str, Any], *, where: str) -> TrackConfig:
    """TrackConfig from weaver ``-o`` options; input size, outputs and task are fixed by the data."""
    check_track_inputs(data_config, where=where)
    options = upgrade_options(options, where=where)
    return from_options(TrackConfig, options, where=where,
                        defaults=version_defaults(options, TRACK_DEFAULTS, where=where),
                        input_dim=len(data_config.input_dicts["hit_features"]), num_classes=NUM_TARGETS,
                        task="regression")


def check_track_inputs(data_config: Any, *, where: str) -> None:
    """One-line error when the data config does not provide (hit_points[4], hit_features, hit_mask)."""
    check_inputs(data_config, TRACK_INPUTS, vectors=("hit_points", "x, y, z, t"), where=where)


class TrackLoss(nn.Module):
    """``position_weight * |p - p_true|^2 + direction_weight * (1 - cos(d, d_true))``, averaged over events.

    Columns: (x0, y0, z0) / R, then the direction; the predicted direction is normalised first, so its length is
    free. weaver passes ``model_output.squeeze()``, so a batch of one arrives as (6,): it is matched to the label.
    """

    def __init__(self, *, position_weight: float = 1.0, direction_weight: float = 2.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.position_weight, self.direction_weight, self.eps = position_weight, direction_weight, eps

    def terms(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(mean squared entry-point distance, mean 1 - cos) of (B, 6) tensors."""
        pred = match_target_shape(pred, target)
        position = (pred[:, :3] - target[:, :3]).square().sum(dim=1).mean()
        cos = (F.normalize(pred[:, 3:], dim=1, eps=self.eps) * F.normalize(target[:, 3:], dim=1, eps=self.eps)).sum(1)
        return position, (1.0 - cos).mean()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        position, direction = self.terms(pred, target)
        return self.position_weight * position + self.direction_weight * direction

    def extra_repr(self) -> str:
        return f"position_weight={self.position_weight}, direction_weight={self.direction_weight}"


def match_target_shape(pred: Tensor, target: Tensor) -> Tensor:
    """Undo weaver's ``squeeze()`` (batch of one) and check that predictions are (B, 6) like the label."""
    target_shape = target.shape if target.dim() == 2 else (-1, NUM_TARGETS)
    if pred.numel() != target.numel() or target.shape[-1] != NUM_TARGETS:
        raise ValueError(f"track loss: prediction {tuple(pred.shape)} does not match label {tuple(target.shape)} "
                         f"(expected (batch, {NUM_TARGETS}))")
    return pred.reshape(target_shape)


class HitPointerHead(nn.Module):
    """Two softmax-weighted centroids of the hit positions (entry side, exit side) -> (entry point, direction).

    Both centroids are projected onto the unit sphere (the targets' entry points lie on it); the direction is the
    chord from the first to the second. Rotation-equivariant by construction when the hit scores are invariant.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.score = nn.Linear(embed_dim, 2)

    def forward(self, tokens: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, L, E); positions (B, 3, L) hit x, y, z / R; mask (B, 1, L). Returns (B, 6)."""
        scores = self.score(self.norm(tokens)).float()  # (B, L, 2)
        scores = scores.masked_fill(~mask.bool().squeeze(1).unsqueeze(-1), float("-inf"))
        weights = torch.softmax(scores, dim=1)
        centroids = torch.einsum("blk,bcl->bkc", weights, positions.float())  # (B, 2, 3)
        unit = F.normalize(centroids, dim=-1, eps=1e-6)
        return torch.cat((unit[:, 0], unit[:, 1] - unit[:, 0]), dim=1).to(tokens.dtype)


class TrackTransformer(ParticleTransformer):
    """ParT on hits with a (B, 6) regression head (``mlp`` or ``pointer`` + zero-initialised ``mlp``)."""

    def __init__(self, cfg: TrackConfig) -> None:
        super().__init__(cfg.model)
        self.track = cfg.track
        self.pointer = HitPointerHead(cfg.model.embed_dim) if cfg.track.track_head == "pointer" else None
        if self.pointer is not None:  # start from the geometric estimate; the MLP learns corrections
            last = self.fc[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, v: Tensor | None = None, mask: Tensor | None = None, uu: Tensor | None = None,
                uu_idx: Tensor | None = None) -> Tensor:
        """x: (B, C, L) hit features; v: (B, 4, L) hit x, y, z, ct; mask: (B, 1, L), real hits first. Returns (B, 6).

        The events run in ``hit_buckets`` groups of similar hit count, each cut to its own longest event (a 300-hit
        event next to a 1500-hit one no longer pays for 1200 padded hits). Only BatchNorm couples the events of a
        batch: the hit embedding's input BatchNorm still sees the whole padded batch; in training the pair
        embedding's BatchNorm normalises over each group's pairs. In evaluation the groups change nothing but the
        cost (tests/test_track_model.py)."""
        if mask is None:
            mask = torch.ones_like(x[:, :1])
        ctx = self.new_context()
        x, v, mask, uu = self.trim_inputs(x, v, mask, uu, uu_idx)  # advances the DSA schedule once per forward
        groups = self.hit_groups(mask)
        if len(groups) == 1:
            out = self._forward_group(x, v, mask, uu, ctx=ctx, normalized_inputs=False)
        else:
            x = self.embed.input_bn(x)  # the padded batch's statistics, as with one group
            outs = []
            for idx in groups:
                length = int(mask[idx].sum(dim=(1, 2)).max().clamp(min=1))
                outs.append(self._forward_group(
                    x[idx, :, :length], None if v is None else v[idx, :, :length], mask[idx, :, :length],
                    None if uu is None else uu[idx, :, :length, :length], ctx=bucket_context(ctx),
                    normalized_inputs=True))
            out = torch.cat(outs).index_select(0, torch.argsort(torch.cat(groups)))
        self.publish(ctx)
        return out

    def hit_groups(self, mask: Tensor) -> list[Tensor]:
        """Event indices in ``hit_buckets`` groups of similar hit count (one group when all counts are equal or the
        model is built for export, whose graph must not depend on the data)."""
        counts = mask.sum(dim=(1, 2))
        buckets = self.track.hit_buckets
        if buckets == 1 or self.for_inference or bool(counts.min() == counts.max()):
            return [torch.arange(mask.size(0), device=mask.device)]
        return length_buckets(counts, -(-mask.size(0) // buckets))

    def _forward_group(self, x: Tensor, v: Tensor | None, mask: Tensor, uu: Tensor | None, *, ctx: ForwardContext,
                       normalized_inputs: bool) -> Tensor:
        """One group of events: pair bias (dense kinds), blocks, pooled MLP head plus the pointer head."""
        bias = None if self._uses_selected_pairs() else self.pair_bias(v, uu, mask)
        encoded = self.encode_trimmed(x, v, mask, bias, ctx=ctx, normalized_inputs=normalized_inputs)
        out = self.fc(self.pool(encoded.tokens, encoded.padding_mask))
        if self.pointer is not None:
            self._need_vectors(v, "track_head='pointer'")
            out = out + self.pointer(encoded.particle_tokens, v[:, :3], mask)  # per-hit tokens, before latents
        return out


def rotate_about_z(t: Tensor, cos: Tensor, sin: Tensor, ix: int, iy: int) -> Tensor:
    """Rotate the (ix, iy) channels of t (B, C, ...) by the per-event angle given as cos, sin (B,)."""
    shape = (-1,) + (1,) * (t.dim() - 2)
    c, s = cos.view(shape).to(t.dtype), sin.view(shape).to(t.dtype)
    x, y = t[:, ix], t[:, iy]
    out = t.clone()
    out[:, ix] = c * x - s * y
    out[:, iy] = s * x + c * y
    return out


def select_hits(points: Tensor, features: Tensor, mask: Tensor, *, max_hits: int, charge_index: int | None,
                trim: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Real hits first (stable); with max_hits > 0 only the highest-charge hits; ``trim``: cut to the longest event.

    Padding positions and extra padded slots never change which hits are kept, so the output is padding-invariant.
    ``trim=False`` keeps the length data-independent (for ONNX export).
    """
    real = mask.bool().squeeze(1)
    if max_hits > 0 and charge_index is not None:
        rank = features[:, charge_index].masked_fill(~real, float("-inf"))
        order = rank.topk(min(max_hits, rank.size(1)), dim=1).indices
    else:
        order = torch.argsort(real.to(torch.int8), dim=1, descending=True, stable=True)
    if trim:
        order = order[:, :max(int(real.sum(dim=1).max()), 1)]

    def take(t: Tensor) -> Tensor:
        return t.gather(2, order.unsqueeze(1).expand(-1, t.size(1), -1))

    return take(points), take(features), take(mask)


class HitTracker(nn.Module):
    """weaver-facing wrapper: (hit_points, hit_features, hit_mask) -> ``mod`` -> (B, 6).

    Does the input-side work: hit selection / padding trim, and the random azimuthal rotation while training (the
    inputs are rotated, the prediction is rotated back, which is the same as rotating inputs and label).
    """

    def __init__(self, mod: TrackTransformer, *, xy_channels: dict[str, tuple[int, int]], charge_index: int | None,
                 trim: bool = True) -> None:
        super().__init__()
        self.mod = mod
        self.xy_channels = xy_channels
        self.charge_index = charge_index
        self.trim = trim

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"mod.cls_token"}

    def forward(self, points: Tensor, features: Tensor, mask: Tensor) -> Tensor:
        cfg = self.mod.track
        angle = None
        if self.training and cfg.augment_azimuth:
            angle = torch.rand(points.size(0), device=points.device) * (2 * math.pi)
            cos, sin = angle.cos(), angle.sin()
            points = rotate_about_z(points, cos, sin, *self.xy_channels["hit_points"])
            features = rotate_about_z(features, cos, sin, *self.xy_channels["hit_features"])
        if self.trim or cfg.max_hits > 0:
            points, features, mask = select_hits(points, features, mask, max_hits=cfg.max_hits,
                                                 charge_index=self.charge_index, trim=self.trim)
        out = self.mod(features, v=points, mask=mask)
        if angle is not None:  # rotate the prediction back to the original frame
            out = rotate_about_z(rotate_about_z(out, cos, -sin, 0, 1), cos, -sin, 3, 4)
        return out


def track_model_info(data_config: Any) -> dict[str, Any]:
    """model_info for weaver (ONNX export): batch and hit axes dynamic, output (N, 6) named ``output``."""
    names = list(data_config.input_names)
    return {
        "input_names": names,
        "input_shapes": {k: ((1,) + tuple(s[1:])) for k, s in data_config.input_shapes.items()},
        "output_names": ["output"],
        "dynamic_axes": {**{k: {0: "N", 2: "n_hits"} for k in names}, "output": {0: "N"}},
    }


def _xy_channels(data_config: Any, *, where: str) -> dict[str, tuple[int, int]]:
    """Indices of hit_x and hit_y in hit_points and hit_features (for the azimuthal augmentation)."""
    out = {}
    for name in ("hit_points", "hit_features"):
        variables = list(data_config.input_dicts[name])
        if "hit_x" not in variables or "hit_y" not in variables:
            raise ValueError(f"{where}: augment_azimuth needs hit_x and hit_y in {name}; it has {variables} "
                             "(set -o augment_azimuth False)")
        out[name] = (variables.index("hit_x"), variables.index("hit_y"))
    return out


def build_track_model(data_config: Any, options: dict[str, Any], *, where: str) -> tuple[HitTracker, dict[str, Any]]:
    """The hit transformer for data/Tracks/tracks.yaml-style inputs, configured from weaver options."""
    cfg = build_track_config(data_config, options, where=where)
    track = cfg.track
    charge_index = None
    if track.max_hits > 0:
        variables = list(data_config.input_dicts["hit_features"])
        if track.charge_feature not in variables:
            raise ValueError(f"{where}: charge_feature {track.charge_feature!r} is not in hit_features {variables}")
        charge_index = variables.index(track.charge_feature)
    xy = _xy_channels(data_config, where=where) if track.augment_azimuth else {}
    model = HitTracker(TrackTransformer(cfg), xy_channels=xy, charge_index=charge_index,
                       trim=not cfg.model.inference.for_inference)
    return model, track_model_info(data_config)


def build_track_loss(data_config: Any, options: dict[str, Any], *, where: str) -> TrackLoss:
    """The task loss with the weights from the same ``-o`` options the model got."""
    track = build_track_config(data_config, options, where=where).track
    return TrackLoss(position_weight=track.position_weight, direction_weight=track.direction_weight)
