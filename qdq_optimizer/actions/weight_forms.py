"""Weight forms producers write that TensorRT cannot take as they are (issue 10, item 7).

- ``zero_scale_channels`` (cleanup, exact): a per-channel weight scale of 0 on an all-zero channel
  (pruned filters: max|w| / 127 = 0). Any positive scale represents that channel exactly, so the
  zero (which TensorRT and ONNX reject) becomes the largest scale of the other channels.
- ``convtranspose_weight_axis``: pytorch-quantization 2.1.3 quantizes ConvTranspose weights on
  axis 0 (input channels); TensorRT needs the output-channel axis 1. The weight is re-quantized
  symmetric per channel on axis 1 from its float values (the Q's float input in the pair form;
  the dequantized values in the int8 form).
- ``weight_per_channel``: a weight quantized per tensor over its float values (ModelOpt's default
  on a Paddle export's Constant-node weights, a per-tensor weight config) spends most of its 255
  codes on the widest output channel: a narrow channel keeps a few (measured: 3 of 127 on the
  PP-OCRv4 recogniser, whose output falls to 3 dB against 10 per channel). TensorRT quantizes
  weights per output channel; the weight is re-quantized so from its float values (max/127). Not
  exact: the report gives how much the weight rounding error falls. Without the float values
  (int8 initializers) nothing is re-quantized: lint's ``trt-weight-per-tensor`` warns instead.
- ``quantize_float_weights``: a Conv/ConvTranspose/Gemm/MatMul whose input arrives quantized but
  whose weight is a float constant (ModelOpt leaves one in YOLO11n) runs in float in TensorRT,
  with Reformats around it. The weight gets symmetric per-channel int8 (max/127).
"""

from __future__ import annotations

import re

import numpy as np
import onnx_graphsurgeon as gs

from ..commute import is_int8_tensor
from ..graph import DEQUANTIZE, Node, QGraph, constant_value
from ..ops import WEIGHTED_OPS
from ..protos import is_float_dtype
from ..qdq_numpy import dequantize_np, quantize_np
from ..reference_weights import float_weight_for
from ..report import Change
from ..trt_patterns import is_ignored, per_tensor_int8, weight_axis
from .mean_keep import keep_means
from .registry import ActionContext, register_action
from .symmetric import symmetric_weight


def weight_pair(graph: QGraph, dq: Node) -> tuple[Node | None, np.ndarray] | None:
    """(Q or None, raw constant) behind a weight DQ: int form (DQ over a constant) or pair form
    (DQ over Q over a float constant); None for anything else."""
    src = dq.inputs[0]
    raw = constant_value(src)
    if raw is not None:
        return None, np.asarray(raw)
    q = graph.producer(src)
    if graph.is_q(q) and len(src.outputs) == 1:
        raw = constant_value(q.inputs[0])
        if raw is not None:
            return q, np.asarray(raw)
    return None


@register_action("zero_scale_channels", params={}, local=True)
def zero_scale_channels(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Give an all-zero weight channel with scale 0 (the anchor DQ's) a positive scale."""
    dq = node
    if dq is None or dq.op != DEQUANTIZE:
        return []
    try:
        p = graph.qparams(dq)
    except ValueError:
        return []
    zero = p.scale == 0
    if not p.per_axis or not zero.any() or p.axis is None:
        return []  # the common case: decided without loading the weight
    found = weight_pair(graph, dq)
    if found is None:
        return []
    q, raw = found
    if q is not None and not np.array_equal(graph.qparams(q).scale, p.scale):
        return []
    channels = np.moveaxis(raw, p.axis, 0).reshape(p.scale.size, -1)
    if np.any(channels[zero] != 0):
        return []  # a non-zero value with scale 0 is no pruned channel: validation refuses it
    positive = p.scale[~zero]
    fill = float(positive.max()) if positive.size else 1.0
    change = Change(
        "rescale",
        [n.name for n in (q, dq) if n is not None],
        f"{int(zero.sum())} all-zero weight channel(s) with scale 0 -> scale {fill:.4g} (exact)",
    )
    if ctx.dry_run:
        return [change]
    new_scale = np.where(zero, np.float32(fill), p.scale).astype(np.float32)
    nodes = [n for n in (q, dq) if n is not None]
    s_c = graph.float_constant(f"{dq.name}_scale", new_scale)
    for n in nodes:
        n.inputs[1] = s_c
    graph.touch()
    return [change]


@register_action("convtranspose_weight_axis", params={})
def convtranspose_weight_axis(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Re-quantize a ConvTranspose (the anchor) weight quantized on axis 0 on axis 1."""
    ct = node
    if ct is None or ct.op != "ConvTranspose" or len(ct.inputs) < 2:
        return []
    if int(ct.attrs.get("group", 1)) != 1 or is_ignored(ct, ctx.ignore):
        return []
    w_t = ct.inputs[1]
    dq = graph.producer(w_t)
    if not graph.is_dq(dq) or len(w_t.outputs) != 1:
        return []
    found = weight_pair(graph, dq)
    if found is None:
        return []
    q, raw = found
    p = graph.qparams(dq)
    if not p.per_axis or p.axis != 0 or raw.ndim < 2:
        return []
    w = (
        np.asarray(raw, np.float32)
        if q is not None
        else dequantize_np(raw, p.scale, p.zero_point, 0)
    )
    source = "float weights" if q is not None else "dequantized int8 weights"
    change = Change(
        "requantize",
        [n.name for n in (q, dq) if n is not None],
        f"ConvTranspose '{ct.name}' weight per-channel axis 0 -> 1 (output channels), from "
        f"its {source}",
    )
    if ctx.dry_run:
        return [change]
    wq, scale = symmetric_weight(w, 1, graph)
    if q is None:
        graph.set_input(dq, 0, gs.Constant(graph.unique_name(f"{w_t.name}_int8"), wq))
        graph.set_weight_qparams([dq], scale, 1, dq.name)
    else:
        graph.set_weight_qparams([q, dq], scale, 1, dq.name)
    return [change]


def _error(w: np.ndarray, q: np.ndarray, scale: np.ndarray, axis: int | None) -> float:
    """Sum of squares of ``w - dequantize(q)``: the weight's rounding (and clipping) error."""
    back = dequantize_np(q, scale, None, axis)
    return float(np.sum((np.asarray(w, np.float64) - back) ** 2))


@register_action("weight_per_channel", params={})
def weight_per_channel(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Re-quantize a per-tensor weight of a weighted op (the anchor) per output channel, from
    its float values: the pair form's Q input, or the user's float model (``--reference``)."""
    op = node
    if op is None or op.op not in WEIGHTED_OPS:
        return []
    if len(op.inputs) < 2 or is_ignored(op, ctx.ignore):
        return []
    t = op.inputs[1]
    dq = graph.producer(t)
    found = weight_pair(graph, dq) if graph.is_dq(dq) else None
    if found is None:
        return []
    q, raw = found
    p = per_tensor_int8(graph, dq)
    if p is None:
        return []
    if q is not None and not np.array_equal(graph.qparams(q).scale, p.scale):
        return []
    axis = weight_axis(graph, t)
    if axis is None or any(is_ignored(u, ctx.ignore) for u in t.outputs):
        return []  # not only weights of one axis; or dequantize_ignored makes them float
    if any(u.op == "ConvTranspose" and int(u.attrs.get("group", 1)) != 1 for u in t.outputs):
        return []
    if q is not None:
        w, source = np.asarray(raw, np.float32), "its float values"
    else:
        w = float_weight_for(graph, dq, ctx.settings)
        source = "the reference model's float weight"
        if w is None:
            return []  # int8 values only: re-rounding them would add error (lint warns)
    if w.ndim < 2 or w.shape[axis] < 2 or (op.op == "MatMul" and w.ndim != 2):
        return []  # one output channel: per-tensor is per-channel already
    step = float(p.scale.reshape(-1)[0])
    wq, scale = symmetric_weight(w, axis, graph)
    held = quantize_np(w, p.scale, None, None) if q is not None else raw  # the int8 values now
    before, after = _error(w, held, p.scale, None), _error(w, wq, scale, axis)
    if not after < before:
        return []  # every channel already spans the per-tensor range: nothing to gain
    codes = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1) / step
    narrow = int(np.sum(codes < 63.5))
    gain = "all of it" if after == 0 else f"{10 * np.log10(before / after):.1f} dB"
    name = q.inputs[0].name if q is not None else dq.inputs[0].name
    w_old, w_new = dequantize_np(held, p.scale, None, None), dequantize_np(wq, scale, None, axis)
    # each reader's bias (the float output mean: w is the float weight), before the weights change
    kept = keep_means(graph, t, w_old, w_new, ctx, w)
    change = Change(
        "requantize",
        [n.name for n in (q, dq) if n is not None],
        f"weight '{name}' {list(w.shape)} of '{op.name}' per-tensor -> per-channel (axis {axis}, "
        f"max/127) from {source}: {narrow} of {w.shape[axis]} output channels used under 64 of "
        f"127 codes; weight rounding error down {gain} (not exact)" + (f"; {kept}" if kept else ""),
    )
    if ctx.dry_run:
        return [change]
    if q is None:
        graph.set_input(dq, 0, gs.Constant(graph.unique_name(f"{name}_per_channel"), wq))
    graph.set_weight_qparams([n for n in (q, dq) if n is not None], scale, axis, dq.name)
    return [change]


def _quantized_input(graph: QGraph, t: gs.Tensor) -> bool:
    return is_int8_tensor(graph, t)


@register_action("quantize_float_weights", params={})
def quantize_float_weights(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Quantize the float constant weight of a weighted op (the anchor) whose input is INT8."""
    w = node
    if w is None or w.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(w.inputs) < 2:
        return []
    if is_ignored(w, ctx.ignore):
        return []
    x, wt = w.inputs[0], w.inputs[1]
    value = constant_value(wt)
    if value is None or not is_float_dtype(np.asarray(value).dtype):
        return []
    if not _quantized_input(graph, x):
        return []
    if w.op == "ConvTranspose" and int(w.attrs.get("group", 1)) != 1:
        return []
    value = np.asarray(value, np.float32)
    if w.op == "MatMul" and value.ndim != 2:
        return []
    if w.op == "Gemm" and (w.attrs.get("transA", 0) or value.ndim != 2):
        return []
    axis = weight_axis(graph, wt)
    if axis is None:
        return []
    wq, scale = symmetric_weight(value, axis, graph)
    # the op's bias takes the float op's output mean (calibration E[x]), before the weights change
    kept = keep_means(graph, wt, value, dequantize_np(wq, scale, None, axis), ctx, value)
    change = Change(
        "quantize",
        [w.name],
        f"float weight '{wt.name}' {list(value.shape)} of an INT8-input {w.op} -> symmetric "
        f"int8 per-channel (axis {axis}, max/127)" + (f"; {kept}" if kept else ""),
    )
    if ctx.dry_run:
        return [change]
    s_c = graph.float_constant(f"{wt.name}_scale", scale)
    z_c = gs.Constant(graph.unique_name(f"{wt.name}_zero_point"), np.zeros(scale.shape, np.int8))
    out = gs.Variable(
        graph.unique_name(f"{wt.name}_dequantized"), dtype=graph.float_type, shape=value.shape
    )
    c = gs.Constant(graph.unique_name(f"{wt.name}_int8"), wq)
    graph.add_node(
        DEQUANTIZE,
        [c, s_c, z_c],
        [out],
        graph.unique_name(f"{wt.name}_DequantizeLinear"),
        {"axis": int(axis)},
    )
    graph.set_input(w, 1, out)
    ctx.warn(
        f"quantize-float-weights: '{w.name}' had float weights behind an INT8 input; they are "
        "now int8 per-channel (max/127): the output moves by that rounding (--verify measures "
        f"it). If it was left float on purpose, keep it float with --ignore '^{re.escape(w.name)}$'"
    )
    return [change]
