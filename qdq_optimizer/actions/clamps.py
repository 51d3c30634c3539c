"""Removing a Q/DQ pair without losing its saturation.

A Q/DQ pair does two things: it rounds to the scale's grid and it saturates at the quantized
type's range (``[(qmin - zp) s, (qmax - zp) s]``, for int8 ``[-128 s, 127 s]``). Calibrators that
clip on purpose (entropy, percentile, MSE) choose a scale whose range cuts off rare large values,
and the model's accuracy was measured with that cut. A rule that removes the pair because
TensorRT would run its consumers in float (float-islands, weighted-output-qdq) should drop the
rounding, not the cut: the pair becomes ``Clip(lo, hi)``. The Clip is left out when the producer's
range is provably inside (a Sigmoid, Tanh, Softmax, HardSigmoid, an earlier Clip or DQ pair no
wider, seen through Concats and ops that move data without changing values), and for per-axis pairs (Clip
takes one bound). Where nothing saturates the Clip is the identity, so outputs are bit-identical
to bypassing the pair; TensorRT fuses a Clip into the conv before it as its activation.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import Node, QGraph, Tensor, constant_value
from ..ops import DATA_MOVEMENT_OPS
from ..protos import is_float_dtype

# Ops whose output lies in a fixed interval whatever their input.
BOUNDED_OPS = {
    "Sigmoid": (0.0, 1.0),
    "HardSigmoid": (0.0, 1.0),
    "Softmax": (0.0, 1.0),
    "Tanh": (-1.0, 1.0),
    "Softsign": (-1.0, 1.0),
}
# Ops whose output values are some of their (first) input's values.
VALUE_PRESERVING_OPS = DATA_MOVEMENT_OPS | {"MaxPool"}
_QRANGE = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}


def saturation_range(graph: QGraph, q: Node) -> tuple[float, float, np.dtype] | None:
    """The interval a per-tensor Q/DQ pair saturates to, and the float type of its scale
    (None for per-axis pairs or types other than int8/uint8)."""
    try:
        p = graph.qparams(q)
    except ValueError:
        return None
    qrange = _QRANGE.get(p.dtype)
    if p.per_axis or qrange is None:
        return None
    raw = constant_value(q.inputs[1])
    ftype = np.asarray(raw).dtype if raw is not None else np.dtype(np.float32)
    s = float(np.asarray(p.scale).reshape(-1)[0])
    zp = 0 if p.zero_point is None else int(np.asarray(p.zero_point).reshape(-1)[0])
    return (qrange[0] - zp) * s, (qrange[1] - zp) * s, ftype


def value_range(graph: QGraph, t: Tensor, depth: int = 16) -> tuple[float, float] | None:
    """An interval ``t`` provably stays in (None when unknown), looking through value-preserving
    ops and Concats (the union of their inputs' intervals) to bounded ops, Clips with constant
    bounds and DQs of per-tensor pairs. ``depth`` bounds the walk (it stays local)."""
    node = graph.producer(t)
    if node is None or depth == 0:
        return None
    if node.op in BOUNDED_OPS:
        return BOUNDED_OPS[node.op]
    if node.op == "Clip":
        return clip_bounds(node)
    if graph.is_dq(node):
        q = graph.producer(node.inputs[0])
        r = saturation_range(graph, q) if graph.is_q(q) else None
        return None if r is None else (r[0], r[1])
    if node.op == "Concat":
        parts = [value_range(graph, i, depth - 1) for i in node.inputs]
        if not parts or any(p is None for p in parts):
            return None
        return min(p[0] for p in parts), max(p[1] for p in parts)
    if node.op in VALUE_PRESERVING_OPS and node.inputs:
        return value_range(graph, node.inputs[0], depth - 1)
    return None


def clip_bounds(node: Node) -> tuple[float, float] | None:
    """(min, max) of a Clip with constant scalar bounds (-inf / inf where absent); None
    otherwise."""
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11 form
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(node.inputs) > i and node.inputs[i].name:
            v = constant_value(node.inputs[i])
            if v is None or np.size(v) != 1:  # ONNX's Clip bounds are scalars
                return None
            bounds.append(float(np.asarray(v).reshape(-1)[0]))
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


def bypass_keeping_saturation(
    graph: QGraph, q: Node, dq: Node, consumers: Iterable[Node] | None = None
) -> Node | None:
    """``graph.bypass_qdq(q, dq, consumers)``, but the consumers read ``Clip(src, lo, hi)`` with
    the pair's saturation range unless the source provably stays inside it. Returns the Clip."""
    src = q.inputs[0]
    r = saturation_range(graph, q)
    if r is None:
        graph.bypass_qdq(q, dq, consumers)
        return None
    ftype = _float_dtype(src) or r[2]  # Clip's bounds have its input's type
    # both compared in that type: 127 * (1/127) is 1.0 in float32, so a Softmax needs no Clip
    lo, hi = (float(np.asarray(v, dtype=ftype)) for v in r[:2])
    inside = value_range(graph, src)
    if inside is not None:
        inside = tuple(float(np.asarray(v, dtype=ftype)) for v in inside)
    if inside is not None and lo <= inside[0] and inside[1] <= hi:
        graph.bypass_qdq(q, dq, consumers)
        return None
    base = f"{q.name}_saturation"
    out = gs.Variable(graph.unique_name(f"{base}_out"), dtype=src.dtype, shape=src.shape)
    clip = graph.add_node(
        "Clip",
        [
            src,
            graph.constant(f"{base}_min", np.asarray(lo, dtype=ftype)),
            graph.constant(f"{base}_max", np.asarray(hi, dtype=ftype)),
        ],
        [out],
        graph.unique_name(base),
    )
    graph.replace_uses(dq.outputs[0], out, only=None if consumers is None else list(consumers))
    graph.drop_if_unused(dq)
    graph.drop_if_unused(q)
    return clip


def _float_dtype(t: Tensor) -> np.dtype | None:
    """The numpy float type of a tensor when graph-surgeon knows it."""
    try:
        dt = np.dtype(t.dtype) if t.dtype is not None else None
    except TypeError:
        return None
    return dt if dt is not None and is_float_dtype(dt) else None
