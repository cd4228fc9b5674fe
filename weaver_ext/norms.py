"""Normalisation layers by name, as weaver-core's ParT versions use them: LayerNorm (v1, v2) or RMSNorm (v3+).

RMSNorm is weaver-core's own exportable one (same numbers as ``torch.nn.RMSNorm`` in fp32, eps = the dtype's
machine epsilon, one ``weight``): it exports to ONNX, where the native ``aten::rms_norm`` does not.
"""

from __future__ import annotations

from typing import Literal

from torch import nn
from weaver.nn.model.ParticleTransformer import RMSNorm

__all__ = ["NormKind", "RMSNorm", "make_norm"]

NormKind = Literal["layernorm", "rmsnorm"]
_NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}


def make_norm(kind: NormKind, dim: int) -> nn.Module:
    """A norm over the last dimension of size ``dim`` (default eps of each class, as weaver-core builds them)."""
    return _NORMS[kind](dim)
