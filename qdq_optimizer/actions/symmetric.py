"""Rule ``symmetric-int8``: uint8, asymmetric int8 and per-channel activation quantizers become
the signed symmetric per-tensor int8 TensorRT runs; asymmetric/uint8 weights are re-quantized
symmetric int8 per output channel from their float values.

Each activation pair keeps every value it represented (scale ``max(|lo|, |hi|) / 127``). The clamp
a range edge at exactly 0 implied (ONNX Runtime deletes the Relu/Clip a uint8 zero point 0 already
performs) is put back as a Clip in front of the Q first: the conversion never loses an activation
(``qdq_optimizer.asymmetric`` explains which edges count). The grid gets coarser (a uint8 [0, a]
range had steps a/255, the int8 one a/127): the rule warns with how many pairs it converted and
the worst step ratio, since only the producer can avoid that cost (quantize symmetric int8).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import asymmetric as asym
from ..graph import DEQUANTIZE, QUANTIZE, Node, QGraph, QParams, constant_value
from ..qdq_numpy import centered_np, dequantize_np, quantize_np
from ..reference_weights import float_weight_for
from ..report import Change
from ..trt_patterns import input_quantized, is_weighted, weight_axis, weight_tensor
from .mean_keep import keep_means
from .registry import ActionContext, register_action

_ATTRS_DROPPED = ("axis", "output_dtype")
_NIBBLE_TYPES = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
# ctx.run key: in a dry run (lint), the per-channel pairs channel-scales would make per-tensor
# first (Q name -> (scale, zero point)), so the conversion is described as the real run makes it
PLANNED_FOLDS = "channel_scales_planned"
# settings (calibration pre-pass): activation Q name -> (tensor it read, scale) when measured
OBSERVED_PAIRS = "observed_activation_pairs"


def _plain(node: Node) -> bool:
    return not node.attrs.get("block_size") and set(node.attrs) <= {"axis", "output_dtype"}


def _params(graph: QGraph, node: Node) -> QParams | None:
    try:
        return graph.qparams(node)
    except ValueError:
        return None


def _is_constant(graph: QGraph, t: gs.Tensor) -> bool:
    """An initializer or a Constant node's output, without loading its values."""
    p = graph.producer(t)
    return isinstance(t, gs.Constant) or (p is not None and p.op == "Constant")


def non_negative(graph: QGraph, tensor: gs.Tensor, memo: dict) -> bool:
    """Is ``tensor`` >= 0 by construction? (``asymmetric.non_negative`` over this graph.)"""

    def constant(t: gs.Tensor):
        return constant_value(t) if t.name and _is_constant(graph, t) else None

    def producer(t: gs.Tensor):
        p = graph.producer(t)
        return None if p is None else (p.op, [i if i.name else None for i in p.inputs])

    return asym.non_negative(tensor, producer, constant, memo, key=id)


def _needs_conversion(p: QParams) -> bool:
    return asym.convertible(p.dtype) and not asym.is_symmetric_int8(p.scale, p.zero_point, p.dtype)


def symmetric_weight(w: np.ndarray, axis: int | None, graph: QGraph) -> tuple[np.ndarray, ...]:
    """(int8 values, scales) of ``w`` quantized symmetric int8, per channel on ``axis`` (max/127;
    an all-zero channel gets scale 1: any positive scale is exact for it)."""
    w = np.asarray(w, np.float32)
    if axis is None:
        amax = np.asarray([np.abs(w).max() if w.size else 0.0])
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    scale = graph.to_float_type(scale).astype(np.float32)  # what the graph will hold
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = quantize_np(w, scale, None, axis if axis is not None else None)
    return q, (scale if axis is not None else scale.reshape(()))


def _set_params(graph: QGraph, node: Node, scale, zp, axis: int | None) -> None:
    node.inputs[1] = graph.float_constant(f"{node.name}_scale", scale)
    zp_c = gs.Constant(graph.unique_name(f"{node.name}_zero_point"), np.asarray(zp, np.int8))
    if len(node.inputs) > 2:
        node.inputs[2] = zp_c
    else:
        node.inputs.append(zp_c)
    for a in _ATTRS_DROPPED:
        node.attrs.pop(a, None)
    if axis is not None:
        node.attrs["axis"] = int(axis)
    graph.touch()


def _observed_range(q: Node, p: QParams, ctx: ActionContext) -> float | None:
    """The largest |x| the calibration samples gave the pair's input, while the pair still reads
    the tensor measured, at the scale it had (``OBSERVED_PAIRS``); else None."""
    measured = (ctx.settings.get(OBSERVED_PAIRS) or {}).get(q.name)
    seen = (ctx.settings.get("observed_ranges") or {}).get(q.inputs[0].name)
    if measured is None or seen is None or p.per_axis or not (np.isfinite(seen) and seen > 0):
        return None
    tensor, scale = measured
    now = np.asarray(p.scale, np.float32).reshape(-1)
    if tensor != q.inputs[0].name or now.shape != scale.shape or np.any(now != scale):
        return None
    return float(seen)


def _clip_bounds(graph: QGraph, node: Node | None) -> tuple[float | None, float | None]:
    """The constant bounds of a Clip (None for an absent or non-constant one)."""
    if node is None or node.op != "Clip":
        return None, None
    bounds: list[float | None] = []
    for k in (1, 2):
        t = node.inputs[k] if len(node.inputs) > k else None
        v = constant_value(t) if t is not None and t.name else None
        bounds.append(float(np.asarray(v).reshape(())) if v is not None and v.size == 1 else None)
    return bounds[0], bounds[1]


def _insert_clamp(graph: QGraph, q: Node, clamp: tuple[float | None, float | None]) -> None:
    x = q.inputs[0]
    ins = [x]
    for edge, value in zip(("min", "max"), clamp, strict=True):
        ins.append(
            gs.Variable.empty()
            if value is None
            else graph.float_constant(f"{q.name}_{edge}", value)
        )
    while len(ins) > 1 and isinstance(ins[-1], gs.Variable) and not ins[-1].name:
        ins.pop()
    out = gs.Variable(graph.unique_name(f"{x.name}_clamped"), dtype=x.dtype, shape=x.shape)
    graph.add_node("Clip", ins, [out], graph.unique_name(f"{q.name}_implied_clamp"))
    graph.set_input(q, 0, out)


def convert_activation(
    graph: QGraph, q: Node, ctx: ActionContext, stats: dict, memo: dict[int, bool]
) -> Change | None:
    """Convert one activation pair (Q ``q`` and its DQs) when the rule converts it; the change,
    or None. ``memo`` caches the non-negativity walk across calls."""
    p = _params(graph, q)
    planned = ctx.run.get(PLANNED_FOLDS, {}).get(q.name) if ctx.dry_run and p else None
    if planned is not None:
        p = QParams(np.float32(planned[0]), np.asarray(planned[1]), None, p.dtype)
    if p is None or not _needs_conversion(p) or not _plain(q):
        return None
    dqs = list(q.outputs[0].outputs)
    if not dqs or not all(graph.is_dq(d) and _plain(d) for d in dqs):
        return None
    if graph.is_graph_output(q.outputs[0]):
        return None
    r = asym.represented_range(p.scale, p.zero_point, p.dtype)
    if r.amax <= 0 or not np.isfinite(r.amax):
        return None
    scale = asym.target_scale(p.scale, p.zero_point, p.dtype)
    clamp = asym.implied_clamp(r)
    producer = graph.producer(q.inputs[0])
    reached = asym.within(r, _clip_bounds(graph, producer))
    if reached.amax < r.amax and not (p.dtype == onnx.TensorProto.INT8 and not p.per_axis):
        scale = min(scale, asym.symmetric_scale(reached))  # the values a Clip lets through
    seen = _observed_range(q, p, ctx)
    if seen is not None:
        scale = asym.calibrated_scale(scale, float(np.asarray(p.scale).reshape(-1)[0]), seen)
    # ORT deletes activations, never graph inputs: a graph input's range edge clamps nothing;
    # nor does a zero edge on a tensor that is non-negative by construction (a decode head)
    add_clamp = (
        producer is not None
        and asym.clamp_needed(clamp, producer.op)
        and not (clamp[0] == 0.0 and non_negative(graph, q.inputs[0], memo))
    )
    ratio = asym.step_ratio(scale, p.scale)
    kind = (
        "uint8"
        if p.dtype == onnx.TensorProto.UINT8
        else ("per-channel int8" if p.per_axis else "asymmetric int8")
    )
    stats["pairs"] += 1
    stats[kind] = stats.get(kind, 0) + 1
    stats["clamps"] += int(add_clamp)
    stats["ratio"] = max(stats["ratio"], ratio)
    edges = [f"{e} {v:g}" for e, v in zip(("min", "max"), clamp, strict=True) if v is not None]
    detail = (
        f"{kind} [{float(r.lo.min()):.4g}, {float(r.hi.max()):.4g}] -> int8 scale {scale:.4g} "
        f"(step x{ratio:.2f})" + (f"; Clip({', '.join(edges)}) re-inserted" if add_clamp else "")
    )
    change = Change("requantize", [q.name, *(d.name for d in dqs)], detail)
    if ctx.dry_run:
        return change
    if add_clamp:
        _insert_clamp(graph, q, clamp)
    for n in (q, *dqs):
        _set_params(graph, n, np.float32(scale), np.int8(0), None)
    q.outputs[0].dtype = np.int8
    return change


def _convert_weight(graph: QGraph, dq: Node, ctx: ActionContext, stats: dict) -> Change | None:
    """A DQ over a constant (int form) or over Q(float constant) (pair form) with uint8 or
    asymmetric parameters: re-quantized symmetric int8 from its float values."""
    src = dq.inputs[0]
    q = graph.producer(src)
    pair = graph.is_q(q) and _is_constant(graph, q.inputs[0])
    if not (pair or _is_constant(graph, src)) or not _plain(dq) or (pair and not _plain(q)):
        return None
    p = _params(graph, q if pair else dq)  # parameters first: weights load only when converted
    if p is not None and p.dtype in _NIBBLE_TYPES and not pair:
        return _widen_nibble_weight(graph, dq, p, ctx, stats)
    if p is None or not asym.convertible(p.dtype):
        return None
    zp_zero = p.zero_point is None or not np.any(p.zero_point != 0)
    if p.dtype == onnx.TensorProto.INT8 and zp_zero:
        return None  # symmetric already (per-tensor or per-channel: both are TensorRT weights)
    if pair and len(src.outputs) != 1:
        return None
    raw = constant_value(q.inputs[0] if pair else src)
    if raw is None:
        return None
    reference = None if pair else float_weight_for(graph, dq, ctx.settings)
    if pair:
        w = np.asarray(raw, np.float32)
    elif reference is not None:
        w = reference
    else:
        w = dequantize_np(raw, p.scale, p.zero_point, p.axis)
    axis = weight_axis(graph, dq.outputs[0])
    stats["weights"] += 1
    wq, scale = symmetric_weight(w, axis, graph)
    w_old = _current_weight(raw, p, pair)
    w_new = dequantize_np(wq, scale, None, axis)
    w_float = w if (pair or reference is not None) else None  # else only its dequantized values
    kept = keep_means(graph, dq.outputs[0], w_old, w_new, ctx, w_float)
    change = Change(
        "requantize",
        [n.name for n in ((q, dq) if pair else (dq,))],
        f"{onnx.TensorProto.DataType.Name(p.dtype).lower()} weight "
        f"'{(q.inputs[0] if pair else src).name}' -> symmetric int8 "
        + (f"per-channel (axis {axis})" if axis is not None else "per-tensor")
        + (" from the reference model's float weight" if reference is not None else "")
        + (f"; {kept}" if kept else ""),
    )
    if ctx.dry_run:
        return change
    zp = np.zeros(np.shape(scale), np.int8)
    if pair:
        for n in (q, dq):
            _set_params(graph, n, scale, zp, axis)
        q.outputs[0].dtype = np.int8
    else:
        graph.set_input(dq, 0, gs.Constant(graph.unique_name(f"{src.name}_int8"), wq))
        _set_params(graph, dq, scale, zp, axis)
    return change


def _widen_nibble_weight(
    graph: QGraph, dq: Node, p: QParams, ctx: ActionContext, stats: dict
) -> Change | None:
    """An int4/uint4 weight (ONNX Runtime's ``weight_type=QInt4/QUInt4``) of ops whose data input
    is INT8: TensorRT has no such kernel (its INT4 is weight-only, for float activations), so the
    op would not run in INT8. The same values as int8 codes ``q - zero_point`` on the same scales
    and axis: exact, as the test checks bit for bit. Weight-only int4 (float data input) and
    blocked int4 stay as they are."""
    if not _plain(dq) or p.scale.ndim > 1:
        return None
    w = dq.outputs[0]
    readers = w.outputs
    if not readers or any(
        not is_weighted(graph, r)
        or weight_tensor(graph, r) is not w
        or not input_quantized(graph, r)
        for r in readers
    ):
        return None
    src = dq.inputs[0]
    stats["widened"] += 1
    change = Change(
        "requantize",
        [dq.name],
        f"{onnx.TensorProto.DataType.Name(p.dtype).lower()} weight '{src.name}' -> int8, the "
        "same values (exact)",
    )
    if ctx.dry_run:
        return change
    codes = centered_np(constant_value(src), p.zero_point, p.axis)  # within -15..15
    graph.set_input(
        dq, 0, gs.Constant(graph.unique_name(f"{src.name}_int8"), codes.astype(np.int8))
    )
    _set_params(
        graph, dq, p.scale, np.zeros(p.scale.shape, np.int8), p.axis if p.scale.ndim else None
    )
    return change


def _current_weight(raw: np.ndarray, p: QParams, pair: bool) -> np.ndarray:
    """What the weight DQ computes now: its integers dequantized, or (pair form) the Q's
    rounding of the float weight at its own type's range."""
    if pair:
        raw = quantize_np(raw, p.scale, p.zero_point, p.axis, asym.INT_RANGES[p.dtype])
    return dequantize_np(raw, p.scale, p.zero_point, p.axis)


def new_stats() -> dict:
    """The counters ``symmetric_int8``'s warning is written from."""
    return {"pairs": 0, "clamps": 0, "weights": 0, "widened": 0, "ratio": 0.0}


def activation_quantizers(graph: QGraph, ctx: ActionContext) -> list[tuple[int, Node]]:
    """The Qs on computed tensors the rule may convert (not ignored), each with its index among
    the graph's Qs in graph order (the same on every import of a model)."""
    return [
        (i, q)
        for i, q in enumerate(graph.nodes_of(QUANTIZE))
        if graph.contains(q) and not ctx.is_ignored(q) and not _is_constant(graph, q.inputs[0])
    ]  # weights are handled from their DQ (convert_weights)


def convert_activations(
    graph: QGraph,
    ctx: ActionContext,
    stats: dict,
    only: int | None = None,
) -> list[Change]:
    """Convert the activation Q/DQ pairs the rule converts; ``only``: just the pair whose Q has
    that index (``testing.symmetric_cost`` converts one at a time to measure what each costs)."""
    memo: dict[int, bool] = {}
    changes: list[Change] = []
    for i, q in activation_quantizers(graph, ctx):
        if only is None or i == only:
            change = convert_activation(graph, q, ctx, stats, memo)
            if change is not None:
                changes.append(change)
    return changes


def convert_weights(graph: QGraph, ctx: ActionContext, stats: dict) -> list[Change]:
    """Re-quantize the uint8/asymmetric weights symmetric int8 from their float values."""
    changes: list[Change] = []
    for dq in graph.nodes_of(DEQUANTIZE):
        # weights of ignored ops stay as they are: keep-ignored-float turns them float exactly
        if graph.contains(dq) and not ctx.any_ignored([dq, *dq.outputs[0].outputs]):
            change = _convert_weight(graph, dq, ctx, stats)
            if change is not None:
                changes.append(change)
    return changes


@register_action("symmetric_int8", params={})
def symmetric_int8(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Convert uint8/asymmetric/per-channel activation Q/DQ to symmetric per-tensor int8 (the
    clamp a zero range edge implied re-inserted first) and re-quantize asymmetric weights."""
    stats = new_stats()
    changes = convert_activations(graph, ctx, stats)
    changes += convert_weights(graph, ctx, stats)
    if (stats["pairs"] or stats["weights"]) and not ctx.dry_run:  # widening int4 costs nothing
        ctx.warn(_cost(stats))
    return changes


def _cost(stats: dict) -> str:
    kinds = ", ".join(
        f"{stats[k]} {k}" for k in ("uint8", "asymmetric int8", "per-channel int8") if stats.get(k)
    )
    parts = []
    if stats["pairs"]:
        db = 20 * np.log10(stats["ratio"]) if stats["ratio"] > 0 else 0.0
        parts.append(
            f"{stats['pairs']} activation Q/DQ ({kinds}) converted to symmetric int8, "
            f"{stats['clamps']} implied clamp(s) re-inserted as Clip; the int8 step is up to "
            f"{stats['ratio']:.2f}x the original ({db:.1f} dB less resolution at worst)"
        )
    if stats["weights"]:
        parts.append(f"{stats['weights']} uint8/asymmetric weight(s) re-quantized symmetric int8")
    return (
        "symmetric-int8: "
        + "; ".join(parts)
        + ". TensorRT runs only symmetric int8: quantize symmetric at the producer to avoid this "
        "cost (measure it with --verify)"
    )
