"""The calling convention of the fast-path ONNX graph: the caller buckets jets by multiplicity (numpy arrays in).

``weaver --export-onnx`` with ``-o inference_path "'bucketed'"`` writes a graph for one bucket: its length axis is
dynamic and every particle slot it is given is computed. So the caller, as in production, sorts the jets of a batch
by multiplicity, cuts about ``bucket_size`` jets per group (boundaries with the fewest padded slots), trims each group
to its longest jet and runs the graph per group.
``predict_bucketed`` does that for an onnxruntime session; docs/onnx.md shows it in a few lines.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .bucketed import min_padding_sizes

__all__ = ["bucket_slices", "predict_bucketed", "trim_to_longest"]


def bucket_slices(mask: np.ndarray, bucket_size: int) -> list[tuple[np.ndarray, int]]:
    """(jet indices, length) per bucket, as the PyTorch fast path buckets: jets sorted by multiplicity, split into
    ceil(N / ``bucket_size``) buckets (0 = one) with the fewest padded slots, each cut to its longest jet (at least 1).
    mask: (N, 1, L), nonzero for real particles in front."""
    lengths = (mask[:, 0] != 0).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    if bucket_size <= 0 or len(order) <= bucket_size:
        groups = [order]
    else:
        sizes = min_padding_sizes(lengths[order], -(-len(order) // bucket_size))
        groups = np.split(order, np.cumsum(sizes)[:-1])
    return [(idx, max(int(lengths[idx].max()), 1)) for idx in groups if len(idx)]


def trim_to_longest(inputs: Mapping[str, np.ndarray], mask_name: str = "pf_mask") -> dict[str, np.ndarray]:
    """The batch cut to its longest jet, as weaver's SequenceTrimmer cuts it in eval (the padded graph's best case)."""
    length = max(int((inputs[mask_name][:, 0] != 0).sum(axis=1).max()), 1)
    return {k: np.ascontiguousarray(v[..., :length]) for k, v in inputs.items()}


def predict_bucketed(session, inputs: Mapping[str, np.ndarray], *, bucket_size: int = 32,
                     mask_name: str = "pf_mask") -> np.ndarray:
    """Run an onnxruntime ``session`` of the fast-path graph over a batch of weaver-layout inputs (real particles
    first, as weaver's data loading writes them); outputs in the batch's order. ``inputs`` may hold more arrays than
    the graph reads (the exporter drops unused ones, e.g. ParT's ``pf_points``)."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"the ONNX graph needs inputs {missing}; given {sorted(inputs)}")
    outputs: np.ndarray | None = None
    for idx, length in bucket_slices(inputs[mask_name], bucket_size):
        feed = {n: np.ascontiguousarray(inputs[n][idx][..., :length]) for n in names}
        out = session.run(None, feed)[0]
        if outputs is None:
            outputs = np.empty((len(inputs[mask_name]), *out.shape[1:]), dtype=out.dtype)
        outputs[idx] = out
    return outputs
