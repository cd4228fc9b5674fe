"""The fused fp32 attention kernel of the packed layout (``csrc/grouped_attention.cpp``), built at first use.

The kernel computes softmax(q k^T / sqrt(d) + bias) v per jet and head in place, from the strided q, k, v rows of
the packed token matrix and the pair terms of the real pairs, without writing any (jets, heads, L, L) tensor
(docs/benchmarks.md, session 10). It is compiled once per machine with the system C++ compiler (``$CXX``, default
``g++``; inductor needs one too) for this CPU (``-march=native``), cached under ``$XDG_CACHE_HOME/weaverlab``, and
loaded with ctypes. It runs its (jet, head) tasks on ``torch.get_num_threads()`` OpenMP threads. Where no compiler
works, ``grouped_attention_library`` returns None and the caller keeps its bmm path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["fused_class_attention", "fused_grouped_attention", "grouped_attention_library"]

Tensor = torch.Tensor

SOURCE = Path(__file__).with_name("csrc") / "grouped_attention.cpp"
# no -ffast-math: the kernel's exp relies on exact rounding steps. -fopenmp: the loaded libgomp.so.1 is torch's own,
# so the kernel's parallel loop runs on torch's warm OpenMP threads (another pool would fight their spin-waiting)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-std=c++17", "-shared",
         "-fPIC")


def _cpu_signature() -> str:
    """The CPU model and flags: a kernel built with -march=native must not be reused on another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def _build(compiler: str, target: Path) -> None:
    """Compile ``SOURCE`` to ``target`` (atomically, so concurrent processes never load half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial)], check=True, capture_output=True,
                       timeout=120)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@functools.cache
def grouped_attention_library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with one warning) where it cannot be built or loaded."""
    compiler = os.environ.get("CXX", "g++")
    key = hashlib.sha256(b"\0".join(s.encode() for s in (SOURCE.read_text(), compiler, *FLAGS, _cpu_signature())))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "weaverlab"
    target = cache / f"grouped_attention_{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        warnings.warn(f"fused attention kernel unavailable ({compiler}: {err}); using batched matmuls", stacklevel=2)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.weaverlab_grouped_attention.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, i64, i64, ptr, i64, ptr, ptr,
                                                i64, ptr, i64, i64, i64, i64, ctypes.c_float, i64]
    lib.weaverlab_grouped_attention.restype = None
    lib.weaverlab_max_length.restype = i64
    lib.weaverlab_max_head_dim.restype = i64
    lib.weaverlab_class_attention.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, i64, i64, ptr, ptr, i64, i64, ptr,
                                              i64, i64, ctypes.c_float, i64]
    lib.weaverlab_class_attention.restype = None
    return lib


def _kernel_for(q: Tensor, k: Tensor, v: Tensor, extra: Tensor, longest: int) -> ctypes.CDLL | None:
    """The library where the kernels apply: fp32 CPU tensors with unit-stride head dims, a head dim that is a
    multiple of 16 and jets within the kernel's limits (its ``weaverlab_max_*``), a compiled kernel."""
    dim = q.size(-1)
    if (any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (q, k, v, extra)) or dim % 16
            or any(t.stride(-1) != 1 for t in (q, k, v))):
        return None
    lib = grouped_attention_library()
    if lib is None or dim > lib.weaverlab_max_head_dim() or longest > lib.weaverlab_max_length():
        return None
    return lib


def _strided(t: Tensor) -> tuple[int, int, int]:
    """(data pointer, row stride, head stride) of a (1, H, rows, D) tensor."""
    return t.data_ptr(), t.stride(2), t.stride(1)


def fused_grouped_attention(q: Tensor, k: Tensor, v: Tensor, pair_terms: Tensor, jets: Tensor, groups: Tensor, *,
                            self_pairs: bool) -> Tensor | None:
    """q, k, v (1, H, T, D) fp32 -> (T, H, D) by the kernel (arguments as ``grouped.PairGroups``), or None where it
    does not apply (``_kernel_for``). Rows outside every group are zero."""
    _, heads, rows, dim = q.shape
    groups, jets = groups.to(torch.int64).contiguous(), jets.to(torch.int64).contiguous()
    lib = _kernel_for(q, k, v, pair_terms, int(groups[:, 2].max()) if len(groups) else 0)
    if lib is None:
        return None
    terms = pair_terms.contiguous()
    out = q.new_zeros(rows, heads, dim)
    lib.weaverlab_grouped_attention(*_strided(q), *_strided(k), *_strided(v), terms.data_ptr() if terms.numel()
                                    else None, int(self_pairs), jets.data_ptr(), groups.data_ptr(), len(groups),
                                    out.data_ptr(), heads * dim, dim, heads, dim, dim ** -0.5,
                                    max(1, torch.get_num_threads()))
    return out


def fused_class_attention(q: Tensor, k: Tensor, v: Tensor, jets: Tensor, groups: Tensor) -> Tensor | None:
    """Class attention of the packed layout by the kernel: q (1, H, B, D) class queries, k, v (1, H, B + T, D) (the
    class tokens, then the packed rows) -> (B, H, D); None where the kernel does not apply."""
    _, heads, num_jets, dim = q.shape
    groups, jets = groups.to(torch.int64).contiguous(), jets.to(torch.int64).contiguous()
    lib = _kernel_for(q, k, v, q, int(jets[:, 1].max()) if len(jets) else 0)
    if lib is None:
        return None
    out = q.new_empty(num_jets, heads, dim)
    lib.weaverlab_class_attention(*_strided(q), *_strided(k), *_strided(v), jets.data_ptr(), groups.data_ptr(),
                                  len(groups), num_jets, out.data_ptr(), heads, dim, dim ** -0.5,
                                  max(1, torch.get_num_threads()))
    return out
