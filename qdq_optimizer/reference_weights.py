"""Float weights from the user's float model (``--reference``) for the int8 (or int4) weights a
quantized model holds per tensor: what lets ``weight-per-channel`` re-quantize them per output channel,
as TensorRT quantizes weights, when the model itself keeps no float values (ONNX Runtime's
``per_channel=False`` default writes int8 initializers).

A pre-pass, like the calibration one: it runs before the rules and hands them its result in
settings (``observed_float_weights``: weighted op name -> float weight), so the rules stay graph
rewrites. A float weight is taken only when it provably is the one that was quantized: the op has
the same name in both models (quantizers keep node names), the same weight shape, and rounding
the float weight with the model's own scale gives its int8 values (``|w - s (q - z)| <= s/2``
everywhere, a little slack for float arithmetic). A float conv whose output only a
BatchNormalization reads is tried with the BN folded in as well: ONNX Runtime's pre-processing
folds BN before it quantizes.
"""

from __future__ import annotations

import numpy as np
import onnx

from .graph import Node, QGraph, constant_value
from .ops import CONV_OPS, WEIGHTED_OPS
from .protos import is_float_dtype
from .trt_patterns import output_channel_axis, weight_tensor

SLACK = 1e-3  # in steps: float32 division and rounding in the quantizer
FLOAT_WEIGHTS = "observed_float_weights"  # the setting: op name -> float weight


def float_weight_for(graph: QGraph, dq: Node, settings: dict) -> np.ndarray | None:
    """The reference's float weight for the int8 initializer ``dq`` reads, from the pre-pass's
    setting: ``dq`` must feed exactly one weighted op, by that op's name, of the same shape."""
    readers = dq.outputs[0].outputs if dq.outputs else []
    found = settings.get(FLOAT_WEIGHTS) or {}
    if len(readers) != 1 or readers[0].name not in found:
        return None
    if len(readers[0].inputs) < 2 or readers[0].inputs[1] is not dq.outputs[0]:
        return None  # read as the op's data, not its weight
    w = found[readers[0].name]
    raw = constant_value(dq.inputs[0])
    return w if raw is not None and np.shape(raw) == np.shape(w) else None


def per_tensor_int8_weights(graph: QGraph) -> dict[str, tuple[np.ndarray, float, float]]:
    """Weighted op name -> (int8 values, scale, zero point) of every weight held as an int8
    initializer behind a DQ with one scale, with two or more output channels."""
    out: dict[str, tuple[np.ndarray, float, float]] = {}
    names = _unique_names(graph)
    for op in graph.topo_nodes():
        if op.op not in WEIGHTED_OPS or op.name not in names:
            continue
        t = weight_tensor(graph, op)
        dq = graph.producer(t) if t is not None else None
        if not graph.is_dq(dq):
            continue
        raw = constant_value(dq.inputs[0])
        try:
            p = graph.qparams(dq)
        except ValueError:
            continue
        if raw is None or p.scale.size != 1:
            continue
        raw = np.asarray(raw)
        if raw.dtype.name in ("int4", "uint4"):
            raw = raw.astype(np.int8)  # symmetric-int8 widens these to int8, the same values
        elif raw.dtype.kind not in "iu":
            continue
        axis = output_channel_axis(op, raw.ndim)
        if axis is None or raw.ndim < 2 or raw.shape[axis] < 2:
            continue
        zp = 0.0 if p.zero_point is None else float(np.asarray(p.zero_point).reshape(-1)[0])
        out[op.name] = (raw, float(p.scale.reshape(-1)[0]), zp)
    return out


def _unique_names(graph: QGraph) -> set[str]:
    """Node names that name one node: an empty or repeated name identifies nothing."""
    seen: dict[str, int] = {}
    for n in graph.nodes:
        seen[n.name] = seen.get(n.name, 0) + 1
    return {name for name, k in seen.items() if name and k == 1}


def _bn_folded(graph: QGraph, op: Node, w: np.ndarray) -> np.ndarray | None:
    """``w`` with the BatchNormalization that alone reads ``op``'s output folded in."""
    readers = op.outputs[0].outputs if op.outputs else []
    if op.op not in CONV_OPS or len(readers) != 1:
        return None
    bn = readers[0]
    if bn.op != "BatchNormalization" or bn.inputs[0] is not op.outputs[0]:
        return None
    gamma, var = constant_value(bn.inputs[1]), constant_value(bn.inputs[4])
    if gamma is None or var is None:
        return None
    g = np.asarray(gamma, np.float64) / np.sqrt(
        np.asarray(var, np.float64) + float(bn.attrs.get("epsilon", 1e-5))
    )
    axis = output_channel_axis(op, w.ndim)
    if g.size != w.shape[axis]:
        return None
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w * g.reshape(shape)).astype(np.float32)


def _rounds_to(w: np.ndarray, q: np.ndarray, scale: float, zp: float) -> bool:
    back = (np.asarray(q, np.float64) - zp) * scale
    return bool(np.all(np.abs(np.asarray(w, np.float64) - back) <= scale * (0.5 + SLACK)))


def _may_hold_per_tensor_int8_weights(model: onnx.ModelProto) -> bool:
    """A cheap scan of the protobuf: some DequantizeLinear reads an integer constant with a
    one-element scale and feeds a conv's weight with two or more output channels, or a GEMM (a
    superset of what ``per_tensor_int8_weights`` returns, without indexing the graph)."""
    consts = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[str]] = {}
    for n in model.graph.node:
        if (
            n.op_type == "Constant"
            and n.attribute
            and n.attribute[0].type == onnx.AttributeProto.TENSOR
        ):
            consts[n.output[0]] = n.attribute[0].t
        if len(n.input) > 1:
            readers.setdefault(n.input[1], []).append(n.op_type)
    ints = (
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
    )
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 2:
            continue
        w, s = consts.get(n.input[0]), consts.get(n.input[1])
        if w is None or s is None or w.data_type not in ints or len(w.dims) < 2:
            continue
        if int(np.prod(s.dims)) != 1:
            continue
        ops = set(readers.get(n.output[0], []))
        if not ops or not ops <= WEIGHTED_OPS:
            continue  # not (only) a weight; a weight behind a Transpose is left per tensor
        channels = w.dims[1] if ops == {"ConvTranspose"} else w.dims[0]
        if ops <= CONV_OPS and channels < 2:
            continue  # one output channel: per-tensor is per-channel
        return True
    return False


def reference_weights(
    model: onnx.ModelProto, reference: onnx.ModelProto
) -> tuple[dict[str, np.ndarray], list[str]]:
    """(op name -> float weight of ``reference`` that ``model``'s per-tensor int8 weight was
    rounded from; the names of the per-tensor int8 weights no float weight matched)."""
    if not _may_hold_per_tensor_int8_weights(model):
        return {}, []  # the common case, decided without indexing the graph
    wanted = per_tensor_int8_weights(QGraph.from_model(model))
    if not wanted:
        return {}, []
    ref = QGraph.from_model(reference)
    unique = _unique_names(ref)
    found: dict[str, np.ndarray] = {}
    for op in ref.topo_nodes():
        if op.name not in wanted or op.name not in unique or op.op not in WEIGHTED_OPS:
            continue
        if len(op.inputs) < 2:
            continue
        value = constant_value(op.inputs[1])
        if value is None or not is_float_dtype(np.asarray(value).dtype):
            continue
        q, scale, zp = wanted[op.name]
        w = np.asarray(value, np.float32)
        if w.shape != q.shape:
            continue
        for candidate in (w, _bn_folded(ref, op, w)):
            if candidate is not None and _rounds_to(candidate, q, scale, zp):
                found[op.name] = candidate
                break
    return found, [name for name in wanted if name not in found]
