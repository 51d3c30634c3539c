"""Rule 4: weighted ops keep quantized inputs, lose Q/DQ on outputs nothing INT8 reads, and carry
their weights as a per-channel DQ over an int8 initializer.

- ``fold_weight_q``: ``float W -> Q(s, axis) -> DQ`` becomes ``int8 Q(W) -> DQ``. The int8 values
  are exactly what the Q computed (round half to even, saturate), so outputs are bit-identical and
  the file holds a quarter of the weight bytes. ``keep_weight_q`` (``--keep-weight-q``) keeps the
  pair form.
- ``float_bias``: ONNX Runtime's QDQ format feeds conv biases through an int32 DQ; TensorRT's Q/DQ
  are int8 and it adds the bias in float inside the conv kernel, so the bias becomes the float
  values the DQ computed (bit-identical).
- ``remove_weighted_output_qdq``: a Q/DQ pair on a weighted op's output whose DQ feeds nothing that
  uses an INT8 input (ORT puts one on every output) forces an INT8 output only to turn it back
  into float: a Reformat for nothing. The pair goes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import Node, QGraph, constant_value
from ..qdq_numpy import dequantize_np, quantize_np
from ..report import Change
from ..trt_patterns import is_const, is_ignored, is_weighted, island_pairs
from .clamps import bypass_keeping_saturation
from .registry import ActionContext, register_action


def _keep_weight_q(params: dict, ctx: ActionContext) -> bool:
    value = params.get("keep_weight_q")
    if value is None:
        value = ctx.settings.get("keep_weight_q", False)
    return bool(value)


@register_action("fold_weight_q", params={"keep_weight_q": None}, skip_ignored=False)
def fold_weight_q(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Fold a weight Q (the anchor) into an int8 initializer read by its DQ (unless
    keep_weight_q). The ignore list applies to the weight's users, so ignored Q anchors are
    visited."""
    q = node
    if _keep_weight_q(params, ctx) or not graph.is_q(q):
        return []
    w = q.inputs[0]
    value = constant_value(w)
    out = q.outputs[0]
    if value is None or not out.outputs or graph.is_graph_output(out):
        return []
    if not all(graph.is_dq(c) for c in out.outputs):
        return []
    try:
        p = graph.qparams(q)
    except ValueError:
        return []
    if p.dtype != onnx.TensorProto.INT8 or q.attrs.get("block_size"):
        return []
    users = [c for dq in out.outputs for c in dq.outputs[0].outputs]
    if any(is_ignored(u, ctx.ignore) for u in users):
        return []  # dequantize_ignored turns these back into float weights
    detail = f"weight '{w.name}' {list(value.shape)} -> int8 initializer" + (
        f" (per-channel, axis {p.axis})" if p.per_axis else " (per-tensor)"
    )
    change = Change("fold", [q.name], detail)
    if ctx.dry_run:
        return [change]
    q_int8 = quantize_np(value, p.scale, p.zero_point, p.axis)
    const = gs.Constant(graph.unique_name(f"{w.name}_int8"), q_int8)
    for dq in list(out.outputs):
        graph.set_input(dq, 0, const)
    graph.remove_node(q)
    return [change]


@register_action("float_bias", params={}, skip_ignored=False)
def float_bias(graph: QGraph, node: Node | None, params: dict, ctx: ActionContext) -> list[Change]:
    """Replace the int32 bias DQ feeding the anchor Conv/ConvTranspose/Gemm with its float
    values. Applies to ignored ops too (they stay float, and a float bias is what they need)."""
    w = node
    if w is None or w.op not in ("Conv", "ConvTranspose", "Gemm") or len(w.inputs) < 3:
        return []
    dq = graph.producer(w.inputs[2])
    if not graph.is_dq(dq) or not is_const(dq.inputs[0]):
        return []
    raw = constant_value(dq.inputs[0])
    if raw is None or raw.dtype != np.int32:
        return []
    try:
        p = graph.qparams(dq)
    except ValueError:
        return []
    change = Change("fold", [dq.name, w.name], f"int32 bias DQ -> float bias of '{w.name}'")
    if ctx.dry_run:
        return [change]
    values = dequantize_np(raw, p.scale, p.zero_point, p.axis)
    graph.set_input(w, 2, graph.float_constant(f"{w.name}_bias", values))
    graph.drop_if_unused(dq)
    return [change]


@register_action("remove_weighted_output_qdq", params={})
def remove_weighted_output_qdq(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Remove Q/DQ on the output of a weighted op (the anchor) when its DQ feeds nothing that
    uses INT8 (``trt_patterns.island_pairs``, shared with float-islands and lint)."""
    w = node
    if not is_weighted(graph, w) or is_ignored(w, ctx.ignore) or not graph.contains(w):
        return []
    changes: list[Change] = []
    for q in graph.quantizers_of(w.outputs[0]):
        for f in island_pairs(graph, q, ctx.ignore):
            if graph.is_graph_output(f.dq.outputs[0]):
                continue  # the output pair stays: it defines what the graph output carries
            readers = ", ".join(c.name for c in f.dq.outputs[0].outputs) or "nothing"
            changes.append(
                Change(
                    "remove",
                    [f.q.name, f.dq.name],
                    f"output of '{w.name}' read by {readers} in float",
                )
            )
            if not ctx.dry_run:
                bypass_keeping_saturation(graph, f.q, f.dq)  # the pair's clip stays (clamps.py)
    return changes
