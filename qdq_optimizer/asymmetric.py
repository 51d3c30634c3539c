"""What an asymmetric or uint8 quantizer represents, and the symmetric int8 one TensorRT can run.

TensorRT's Q/DQ are signed int8 with zero point 0. ONNX Runtime's ``quantize_static`` defaults
(uint8 activations, or int8 with a zero point) and NNCF's uint8 describe a range ``[lo, hi]``
that need not be centred on 0. Converting keeps every value the pair could represent:
the symmetric scale is ``max(|lo|, |hi|) / 127``.

One thing the pair did is lost by that: its clamp. ONNX Runtime deletes a Relu or Clip whose
clamp the following Q already performs (a uint8 zero point 0 saturates every negative value to 0;
a range [0, 6] is a ReLU6). A symmetric pair represents negative values again, so the clamp must be
put back as a Clip before the pair is converted, and before anything removes the pair (a pair
TensorRT would run in float is otherwise removed together with the activation it stood for).
Only a range with an edge exactly at 0 (the zero point at the type's minimum or maximum) stands
for such a deleted activation; the Clip re-inserted then spans the whole range (a ReLU6's upper
clamp is its range's maximum). A range edge at a calibrated minimum such as -0.3 only clipped rare
outliers, and the symmetric range still covers it: no Clip.

This module is pure numpy and protobuf: the ``symmetric-int8`` rule (``actions/symmetric.py``)
and quantization-off evaluation (``calibration.bypass_activation_qdq``) both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Integer range of the quantized types the conversion understands. int16/uint16 (ONNX Runtime's
# A16W8 and QInt16 configs) are refused by validation instead: TensorRT has no int16 Q/DQ, and an
# int8 scale over an int16 range is a re-quantization at a 256x coarser step (up to -16 dB on the
# held-out corpus) that belongs to the quantizer, which has the data to choose int8 scales.
INT_RANGES = {
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
}
# Producers whose output is already >= 0: a zero lower edge after them needs no new clamp.
NON_NEGATIVE_OPS = frozenset({"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus"})


@dataclass(frozen=True)
class Range:
    """The float range ``[lo, hi]`` one quantizer represents (per channel when per-axis)."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def amax(self) -> float:
        """The largest magnitude represented: what a symmetric scale must cover."""
        return float(max(np.abs(self.lo).max(), np.abs(self.hi).max()))


def represented_range(scale: np.ndarray, zero_point: np.ndarray | None, dtype: int) -> Range:
    """``[(qmin - z) * s, (qmax - z) * s]`` for each channel."""
    qmin, qmax = INT_RANGES[dtype]
    s = np.asarray(scale, np.float64).reshape(-1)
    z = np.zeros_like(s) if zero_point is None else np.asarray(zero_point, np.float64).reshape(-1)
    z = np.broadcast_to(z, s.shape)
    return Range((qmin - z) * s, (qmax - z) * s)


def is_symmetric_int8(scale: np.ndarray, zero_point: np.ndarray | None, dtype: int) -> bool:
    """What TensorRT runs: int8, zero point 0, one scale (per-tensor)."""
    zp_zero = zero_point is None or not np.any(np.asarray(zero_point) != 0)
    return dtype == TensorProto.INT8 and zp_zero and np.asarray(scale).size == 1


def convertible(dtype: int) -> bool:
    return dtype in INT_RANGES


def symmetric_scale(r: Range) -> float:
    """The per-tensor symmetric int8 scale covering everything ``r`` represented."""
    return r.amax / 127.0


def target_scale(scale: np.ndarray, zero_point: np.ndarray | None, dtype: int) -> float:
    """The symmetric per-tensor int8 scale for a quantizer: the largest scale when it is already
    symmetric int8 per channel (NNCF's per-channel activations; its -128 code is no range TensorRT
    keeps), else the scale covering the whole asymmetric range."""
    zp_zero = zero_point is None or not np.any(np.asarray(zero_point) != 0)
    if dtype == TensorProto.INT8 and zp_zero:
        return float(np.max(np.asarray(scale, np.float64)))
    return symmetric_scale(represented_range(scale, zero_point, dtype))


def within(r: Range, bounds: tuple[float | None, float | None]) -> Range:
    """``r`` narrowed to what a clamp before the quantizer lets through (``None``: no bound): a
    quantizer need not cover values its input never takes (torch's ``reduce_range`` uint8 pair
    clamps to 0..127 and represents 0..255)."""
    lo, hi = bounds
    return Range(
        r.lo if lo is None else np.maximum(r.lo, lo), r.hi if hi is None else np.minimum(r.hi, hi)
    )


# the samples reach less than this fraction of what a pair represents: codes the producer never
# meant to use (torch's reduce_range sizes scales for uint8 0..127: about half); a pair whose data
# fill its range (a MinMax calibration) keeps the full conversion, however small the sample set
UNUSED_RANGE = 2 / 3
# only where the full conversion would coarsen the step this much (a uint8 [0, a] range: x2.01);
# a pair that keeps about its step (uint8 with zero point 128, AMD Quark's XINT8: x1.008) keeps its
# producer's range rather than one read off a few calibration samples
STEP_GROWTH = 1.5


def calibrated_scale(scale: float, original: float, seen: float) -> float:
    """The conversion's scale where calibration samples show how far the data reach. ``scale``
    covers everything the pair represented; when that coarsens the step by ``STEP_GROWTH`` or
    more and the samples' largest |x| (``seen``) stays below ``UNUSED_RANGE`` of it, the scale
    covers ``seen`` instead, but never finer than the ``original`` step (the same grid, so values
    inside it round as before). A reduce_range pair then keeps close to its step instead of
    doubling it; values beyond what the samples reached clip."""
    if scale < STEP_GROWTH * original or seen >= UNUSED_RANGE * 127.0 * scale:
        return scale
    return min(scale, max(original, seen / 127.0))


def implied_clamp(r: Range) -> tuple[float | None, float | None]:
    """(min, max) of the activation the pair stood for, or (None, None). A range with an edge at
    exactly 0 in every channel (zero point at the type's minimum or maximum) stood for a deleted
    Relu or Clip(0, b) (a ReLU6 gives [0, 6] when the data reached 6): the clamp is the whole
    range, which is what the input model computed. Other ranges clamp only calibration outliers
    the symmetric range still covers."""
    if np.all(r.lo == 0) and np.any(r.hi > 0):
        return 0.0, float(r.hi.max())
    if np.all(r.hi == 0) and np.any(r.lo < 0):
        return float(r.lo.min()), 0.0
    return None, None


def clamp_needed(clamp: tuple[float | None, float | None], producer_op: str | None) -> bool:
    """Is a Clip needed to keep ``clamp``? Not when the producer's output is already >= 0 (the
    zero edge is then no deleted activation, and the other edge a calibrated maximum)."""
    lo, hi = clamp
    if lo is None and hi is None:
        return False
    return not (lo == 0.0 and producer_op in NON_NEGATIVE_OPS)


# Ops whose output is >= 0 whatever their input, and ops whose output is >= 0 when every data
# input is (data movement, or arithmetic closed over non-negative numbers).
ALWAYS_NON_NEGATIVE = frozenset(
    {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus", "HardSigmoid", "Sqrt"}
)
KEEPS_NON_NEGATIVE = frozenset(
    {
        "Add", "Mul", "Div", "Max", "Min", "Pow", "Concat", "Slice", "Reshape", "Transpose",
        "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool", "Resize", "Upsample", "Cast", "Split", "Gather", "Expand", "Identity",
        "Tile", "QuantizeLinear", "DequantizeLinear", "ReduceMax", "ReduceMean", "ReduceSum",
    }
)  # fmt: skip
# How many leading inputs are data (the rest are shapes, indices, scales): default all.
_DATA_INPUTS = {
    "Pow": 1, "Slice": 1, "Reshape": 1, "Gather": 1, "Expand": 1, "Tile": 1, "Resize": 1,
    "Upsample": 1, "Squeeze": 1, "Unsqueeze": 1, "QuantizeLinear": 1, "DequantizeLinear": 1,
    "ReduceMax": 1, "ReduceMean": 1, "ReduceSum": 1,
}  # fmt: skip


def non_negative(tensor, producer, constant, memo: dict, key=lambda t: t) -> bool:
    """Is ``tensor`` >= 0 by construction, whatever the graph inputs? Then a zero range edge on
    it is no deleted Relu and needs no Clip (a YOLO decode head: Sigmoid * 2, grids, powers).
    ``producer(t)`` gives (op, inputs with None for absent ones) or None for a graph input or
    initializer; ``constant(t)`` its value or None. Iterative with a memo: linear in the graph."""
    stack = [tensor]
    while stack:
        t = stack[-1]
        k = key(t)
        if k in memo:
            stack.pop()
            continue
        value = constant(t)
        prod = producer(t) if value is None else None
        if value is not None:
            memo[k] = bool(np.all(np.asarray(value, np.float64) >= 0))
        elif prod is None:
            memo[k] = False  # a graph input: unknown
        else:
            op, inputs = prod
            clip_min = (
                constant(inputs[1]) if op == "Clip" and len(inputs) > 1 and inputs[1] else None
            )
            if op in ALWAYS_NON_NEGATIVE or (
                clip_min is not None and np.all(np.asarray(clip_min, np.float64) >= 0)
            ):
                memo[k] = True
            elif op not in KEEPS_NON_NEGATIVE:
                memo[k] = False
            else:
                data = [i for i in inputs[: _DATA_INPUTS.get(op, len(inputs))] if i is not None]
                pending = [i for i in data if key(i) not in memo]
                if pending:
                    stack.extend(pending)
                    continue
                memo[k] = all(memo[key(i)] for i in data)
        stack.pop()
    return memo[key(tensor)]


def step_ratio(new_scale: float, old_scale: np.ndarray) -> float:
    """How much coarser the symmetric grid is than the original one (>= 1 means coarser); for
    per-channel scales, against the finest channel."""
    return float(new_scale / float(np.min(np.asarray(old_scale, np.float64))))


# ----------------------------------------------------------------------------- ModelProto side
def _const_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    values[n.output[0]] = a.t
    return values


def _q_dtype(q: onnx.NodeProto, consts: dict) -> int:
    if len(q.input) > 2 and q.input[2] in consts:
        return consts[q.input[2]].data_type
    out = next((a.i for a in q.attribute if a.name == "output_dtype"), 0)
    return out or TensorProto.UINT8


def materialize_implied_clamps(model: onnx.ModelProto) -> int:
    """Insert, in place, a Clip in front of every activation Q whose range implies a clamp the
    graph no longer has (see the module docstring); returns how many. Used before quantization
    is switched off, so the float evaluation still applies the activations ORT deleted."""
    g = model.graph
    consts = _const_values(model)
    produced_by = {o: n for n in g.node for o in n.output}
    producer_op = {o: n.op_type for o, n in produced_by.items()}
    memo: dict = {}

    def constant(name: str):
        return numpy_helper.to_array(consts[name]) if name in consts else None

    def producer(name: str):
        n = produced_by.get(name)
        return None if n is None else (n.op_type, [i or None for i in n.input])

    float_type = _float_type_of(model, consts)
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    for i, q in enumerate(g.node):
        if q.op_type != "QuantizeLinear" or q.input[0] in consts or q.input[1] not in consts:
            continue
        dtype = _q_dtype(q, consts)
        if not convertible(dtype):
            continue
        scale = numpy_helper.to_array(consts[q.input[1]])
        zp = numpy_helper.to_array(consts[q.input[2]]) if len(q.input) > 2 and q.input[2] else None
        clamp = implied_clamp(represented_range(scale, zp, dtype))
        if q.input[0] not in producer_op or not clamp_needed(clamp, producer_op[q.input[0]]):
            continue
        if clamp[0] == 0.0 and non_negative(q.input[0], producer, constant, memo):
            continue
        name = f"{q.name or q.output[0]}_implied_clamp"
        inputs = [q.input[0]]
        for edge, value in zip(("min", "max"), clamp, strict=True):
            if value is None:
                inputs.append("")
                continue
            init = numpy_helper.from_array(np.asarray(value, float_type), f"{name}_{edge}")
            g.initializer.append(init)
            inputs.append(init.name)
        while inputs and inputs[-1] == "":
            inputs.pop()
        clip = helper.make_node("Clip", inputs, [f"{name}_out"], name=name)
        q.input[0] = clip.output[0]
        new_nodes.append((i, clip))
    for offset, (i, clip) in enumerate(new_nodes):
        g.node.insert(i + offset, clip)
    return len(new_nodes)


def _float_type_of(model: onnx.ModelProto, consts: dict) -> np.dtype:
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in consts:
            dt = consts[n.input[1]].data_type
            if dt != TensorProto.BFLOAT16:
                return helper.tensor_dtype_to_np_dtype(dt)
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float32)
