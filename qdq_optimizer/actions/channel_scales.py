"""Fold a per-channel activation quantizer's scales into the convs around it:
``fold_channel_scales`` (rule ``channel-scales``).

NNCF quantizes a depthwise conv's input per channel (one scale per channel on axis 1). TensorRT
quantizes activations per tensor, and ``symmetric-int8`` can only give such a pair one scale, the
largest: a narrow channel then keeps a few codes (measured: the step grows up to 21x on an NNCF
LRASPP MobileNetV3). When the values reach the Q from a Conv or BatchNormalization through ops
that commute with a positive per-channel factor (Relu, LeakyRelu, PRelu), and every reader of
the pair is a depthwise conv, the factor ``r_c = S / s_c`` (``S`` the largest scale) moves into
those neighbours instead:

    before: Conv(W, b) -> Relu -> Q/DQ(s_c, axis 1) -> DepthwiseConv(V)
    after:  Conv(W r, b r) -> Relu -> Q/DQ(S)       -> DepthwiseConv(V / r)

``round(r_c x / S) = round(x / s_c)``: every value lands on the integer it had, and the depthwise
conv (each output channel reads one input channel) divides the factor out again. Int8 weights keep
their integers; only their per-channel scales change (a per-tensor weight becomes per-channel).
Exact in real arithmetic; the products are rounded to the graph's float type, so a value sitting
on a rounding edge can move by one step (the guard measures the result).

A ReLU6 (Clip(0, 6)) right before the Q counts as a Relu when every channel's quantizer range
ends at or below 6: the Q's saturation already caps each channel, so the Clip keeps only its
lower bound (exact: two nested clamps are the inner one).

Where no Conv/BN can take the factor (hard-swish, SiLU, PP-LCNetV3's learnable affine block,
a ReLU6 whose cap some channel reaches, a chain tensor something else reads), a new Mul
multiplies the Q's input by it, per channel: a pointwise op that TensorRT fuses with the ops
before it and the Q (its PWN fusions), and every value still lands on the integer it had. An
NNCF PP-OCRv5 detector had 10 such pairs (widest/narrowest scale 100): one scale for each cost it
10 dB (10.2 -> 0.2 dB against the float model).

A zero point per channel (NNCF's MIXED preset, int8): each channel's range ``[lo_c, hi_c]`` is
made symmetric first, ``max(|lo_c|, |hi_c|) / 127`` (the conversion ``symmetric-int8`` makes,
per channel: the step at most twice the channel's own), and that folds the same way; one scale
over every channel's range cost that detector's MIXED graph up to 4590x the step.

Left alone: readers that are not depthwise convs (an ordinary conv mixes the channels inside one
per-output-channel weight scale), uint8 with a zero point per channel, an input of unknown rank.
A rescaled weight no longer rounds from the float model's (``--reference``) weight, so later
rules re-quantize it from its own values (``reference_weights.float_weight_for``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from .. import asymmetric as asym
from ..graph import Node, QGraph, QParams, Tensor, constant_value
from ..protos import is_float_dtype
from ..report import Change
from ..trt_patterns import conv_data_readers
from .clamps import clip_bounds
from .registry import ActionContext, register_action
from .symmetric import PLANNED_FOLDS
from .weight_forms import weight_pair

# positively homogeneous: f(r x) = r f(x) for r > 0, per channel
_HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
_MAX_CHAIN = 4

Apply = Callable[[], None]


def _redundant_cap(n: Node, top: float) -> bool:
    """A Clip(0, m) whose cap the Q's saturation makes redundant: m >= ``top``, the largest value
    any channel's quantizer represents (ReLU6 before a quantizer whose range ends below 6)."""
    bounds = clip_bounds(n) if n.op == "Clip" and not n.attrs else None
    return bounds is not None and bounds[0] == 0.0 and bounds[1] >= top


def _producer_chain(graph: QGraph, x: Tensor, top: float) -> tuple[list[Node], Node] | None:
    """(the homogeneous ops between ``x`` and its Conv/BN, that Conv/BN), each tensor on the way
    read by one node only; None otherwise. A Clip(0, m) reading straight into the Q counts when
    its cap is redundant (``_redundant_cap``): without the cap it is a Relu."""
    chain: list[Node] = []
    t = x
    for i in range(_MAX_CHAIN):
        n = graph.producer(t)
        if n is None or len(t.outputs) != 1 or graph.is_graph_output(t):
            return None
        if n.op in ("Conv", "BatchNormalization") and len(n.outputs) == 1:
            return chain, n
        if i == 0 and _redundant_cap(n, top):
            chain.append(n)
            t = n.inputs[0]
            continue
        if n.op not in _HOMOGENEOUS:
            return None
        if n.op == "PRelu" and constant_value(n.inputs[1]) is None:
            return None
        chain.append(n)
        t = n.inputs[0]
    return None


def _expand(factor: np.ndarray, channels: int) -> np.ndarray | None:
    """``factor`` per output channel: repeated for a depthwise conv's channel multiplier."""
    if channels % factor.size:
        return None
    return np.repeat(factor, channels // factor.size)


def _scaled_constant(graph: QGraph, t: Tensor, factor: np.ndarray, name: str):
    """A new float constant ``t * factor`` over axis 0 (None if ``t`` is not a float
    constant whose axis 0 is a multiple of the factor's channels)."""
    v = constant_value(t)
    if v is None or not is_float_dtype(np.asarray(v).dtype) or np.ndim(v) == 0:
        return None
    f = _expand(factor, np.shape(v)[0])
    if f is None:
        return None
    v = np.asarray(v, np.float64)
    return graph.float_constant(name, v * f.reshape((-1,) + (1,) * (v.ndim - 1)))


def _weight_plan(graph: QGraph, conv: Node, factor: np.ndarray) -> Apply | None:
    """How to multiply output channel ``o`` of ``conv``'s weight by ``factor[o]`` (repeated for
    a depthwise channel multiplier) keeping its integers (float constant, DQ over int8/uint8, or
    the pair form); None when it cannot. A zero point stays as it is, per channel:
    ``(q - z) s r = (q - z) (s r)`` (NNCF's asymmetric weights; ``symmetric-int8`` converts them
    afterwards from these values)."""
    w_t = conv.inputs[1]
    new_w = _scaled_constant(graph, w_t, factor, f"{conv.name}_weight_folded")
    if new_w is not None:
        return lambda: graph.set_input(conv, 1, new_w)
    dq = graph.producer(w_t)
    if not graph.is_dq(dq) or len(w_t.outputs) != 1:
        return None
    found = weight_pair(graph, dq)
    try:
        p = graph.qparams(dq)
    except ValueError:
        return None
    if found is None or dq.attrs.get("block_size") or p.axis not in (None, 0):
        return None
    if p.dtype not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        return None
    q, raw = found
    factor = _expand(factor, raw.shape[0]) if raw.ndim else None
    if factor is None:
        return None
    scale = np.broadcast_to(np.asarray(p.scale, np.float64).reshape(-1), factor.shape) * factor
    zp_type = helper.tensor_dtype_to_np_dtype(p.dtype)
    zp = np.zeros(factor.shape, zp_type)
    if p.zero_point is not None:
        zp = np.broadcast_to(np.asarray(p.zero_point).reshape(-1), factor.shape).astype(zp_type)
    new_src = None
    if q is not None:  # pair form: the float weight and both scales scale, the integers stay
        try:
            if not graph.qparams(q).same_as(p):
                return None
        except ValueError:
            return None
        new_src = _scaled_constant(graph, q.inputs[0], factor, f"{conv.name}_weight_folded")
        if new_src is None:
            return None

    def apply() -> None:
        if q is not None:
            graph.set_input(q, 0, new_src)
        nodes = [n for n in (q, dq) if n is not None]
        graph.set_weight_qparams(nodes, graph.to_float_type(scale), 0, f"{conv.name}_weight", zp)

    return apply


def _bias_plan(graph: QGraph, conv: Node, factor: np.ndarray) -> Apply | None:
    if len(conv.inputs) < 3 or not conv.inputs[2].name:
        return lambda: None
    new_b = _scaled_constant(graph, conv.inputs[2], factor, f"{conv.name}_bias_folded")
    return None if new_b is None else (lambda: graph.set_input(conv, 2, new_b))


def _absorb_plan(graph: QGraph, node: Node, factor: np.ndarray) -> list[Apply] | None:
    """Scale the output channels of a Conv (weight and bias) or a BatchNormalization (its
    scale and bias: mean and variance stay)."""
    if node.op == "BatchNormalization":
        plans = [
            (i, _scaled_constant(graph, node.inputs[i], factor, f"{node.name}_folded"))
            for i in (1, 2)
        ]
        if any(c is None for _, c in plans):
            return None
        return [lambda i=i, c=c: graph.set_input(node, i, c) for i, c in plans]
    plans = [_weight_plan(graph, node, factor), _bias_plan(graph, node, factor)]
    return None if any(p is None for p in plans) else plans


def _uniform_zero_point(p: QParams) -> int | None:
    if p.zero_point is None:
        return 0
    z = np.asarray(p.zero_point).reshape(-1)
    return int(z[0]) if np.all(z == z[0]) else None


def _channel_scales(p: QParams) -> tuple[np.ndarray, int, bool] | None:
    """(the scale each channel keeps, the zero point of the folded pair, whether every integer
    stays): with one zero point, the pair's own scales (exact); with a zero point per channel
    (NNCF's MIXED preset, int8), each channel's symmetric scale ``max(|lo_c|, |hi_c|) / 127``
    and zero point 0, the conversion ``symmetric-int8`` makes, per channel (its step at most
    twice the channel's own)."""
    s = np.asarray(p.scale, np.float64).reshape(-1)
    z0 = _uniform_zero_point(p)
    if z0 is not None:
        return s, z0, True
    if p.dtype != onnx.TensorProto.INT8:
        return None
    r = asym.represented_range(p.scale, p.zero_point, p.dtype)
    return np.maximum(np.abs(r.lo), np.abs(r.hi)) / 127.0, 0, False


def _factor_plan(graph: QGraph, q: Node, factor: np.ndarray) -> tuple[Apply, str] | None:
    """Multiply the Q's input by ``factor`` per channel with a new Mul (a constant over axis 1),
    when no Conv/BN upstream can take it: a pointwise op TensorRT fuses with the Q and the
    pointwise ops before it (hard-swish, an affine block) into one kernel. None when the input's
    rank is unknown."""
    x = q.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if rank is None or rank < 3:
        return None
    shape = (factor.size,) + (1,) * (rank - 2)
    const = graph.float_constant(f"{q.name}_channel_factor", factor.reshape(shape))
    name = graph.unique_name(f"{q.name}_channel_factor")

    def apply() -> None:
        out = gs.Variable(graph.unique_name(f"{x.name}_scaled"), dtype=x.dtype, shape=x.shape)
        graph.add_node("Mul", [x, const], [out], name)
        graph.set_input(q, 0, out)

    return apply, name


def _channel_axis(q: Node, p: QParams) -> bool:
    rank = len(q.inputs[0].shape) if q.inputs[0].shape is not None else None
    axis = p.axis if p.axis is not None else 1
    if axis < 0:
        if rank is None:
            return False
        axis += rank
    return axis == 1 and rank in (None, 3, 4, 5)


@register_action("fold_channel_scales", params={})
def fold_channel_scales(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Make a per-channel activation Q/DQ (the anchor Q) per-tensor by folding its channel
    scales into the producing Conv/BN and the depthwise convs reading it (module doc)."""
    q = node
    if q is None or not graph.is_q(q) or q.attrs.get("block_size"):
        return []
    try:
        p = graph.qparams(q)
    except ValueError:
        return []
    if not p.per_axis or not _channel_axis(q, p):
        return []
    found_scales = _channel_scales(p)
    if found_scales is None:
        return []
    s, z0, exact = found_scales
    if not np.all(s > 0) or not np.all(np.isfinite(s)):
        return []
    dqs = list(q.outputs[0].outputs)
    if not dqs or not all(graph.is_dq(d) and graph.qparams(d).same_as(p) for d in dqs):
        return []
    if graph.is_graph_output(q.outputs[0]) or any(d.attrs.get("block_size") for d in dqs):
        return []
    channels = s.size  # a depthwise conv has one group per channel
    readers = conv_data_readers(
        graph, dqs, lambda c: int(c.attrs.get("group", 1)) == channels and not ctx.is_ignored(c)
    )
    if readers is None:
        return []
    big = float(graph.to_float_type(np.float32(s.max())))
    r = big / s
    _, qmax = asym.INT_RANGES[p.dtype]
    found = _producer_chain(graph, q.inputs[0], float((qmax - z0) * s.max())) if exact else None
    chain: list[Node] = []
    plans = None
    if found is not None and not ctx.any_ignored([found[1], *found[0]]):
        chain, absorber = found
        plans = _absorb_plan(graph, absorber, r)
        where, names = f"'{absorber.name}'", [absorber.name, *(n.name for n in chain)]
    if plans is None:  # no Conv/BN takes the factor (hard-swish, an affine block): a new Mul
        chain = []
        factor = _factor_plan(graph, q, r)
        if factor is None:
            return []
        plans = [factor[0]]
        where, names = f"a new Mul '{factor[1]}'", []
    plans += [_weight_plan(graph, c, 1.0 / r) for c in readers]
    if any(a is None for a in plans):
        return []
    how = (
        "every value on the integer it had (exact up to float rounding)"
        if exact
        else "each channel's range made symmetric (step up to "
        f"{float(np.max(s / np.asarray(p.scale, np.float64).reshape(-1))):.2f}x its own)"
    )
    change = Change(
        "fold",
        [*names, q.name, *(d.name for d in dqs)] + [c.name for c in readers],
        f"per-channel scales of '{q.name}' ({s.size} channels, widest/narrowest "
        f"{s.max() / s.min():.3g}) folded into {where} and {len(readers)} depthwise "
        f"conv(s): one scale {big:.4g}, {how}",
    )
    if ctx.dry_run:
        ctx.run.setdefault(PLANNED_FOLDS, {})[q.name] = (big, z0)
        return [change]
    for apply in plans:
        apply()
    for n in chain:
        if n.op == "Clip" and len(n.inputs) > 2:  # the cap the Q makes redundant: a Relu now
            del n.inputs[2]
            graph.touch()
    zp_type = helper.tensor_dtype_to_np_dtype(p.dtype)
    zp = gs.Constant(graph.unique_name(f"{q.name}_zero_point"), np.asarray(z0, zp_type))
    for n in (q, *dqs):
        graph.set_qparams(n, np.float32(big))
        if len(n.inputs) > 2:
            n.inputs[2] = zp
        else:
            n.inputs.append(zp)
        n.attrs.pop("axis", None)
    graph.touch()
    return [change]
