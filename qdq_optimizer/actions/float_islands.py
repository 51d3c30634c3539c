"""Rule 5: float islands and the ignore list.

- ``dequantize_ignored``: weighted ops whose name (or module path: ``/model.105/m.0/Conv`` reads
  as ``model.105.m.0.Conv``) matches an ``ignore`` regex are kept float, as the seed's ignore
  policy does for the Detect head: the Q/DQ on their data input is bypassed for them and their
  weight becomes the float values (the original float weight in pair form, else the DQ's values).
- ``remove_float_islands``: a Q/DQ pair whose DQ feeds only ops TensorRT runs in float (Sigmoid,
  Softmax, Mul/Add of a decode), with no INT8 consumer downstream through ops that commute with
  Q/DQ, makes the producer emit INT8 only to convert it back: it costs a Reformat and buys
  nothing. Average/global pooling is an INT8 consumer (TensorRT runs it in INT8 between Q/DQ:
  ``ops.INT8_POOLING_OPS``), so the pair before a squeeze-excitation pool stays. Processed in
  reverse topological order, so a chain of such pairs goes in one pass.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..graph import Node, QGraph, constant_value
from ..matmul_patterns import weight_dq_reader  # xrules
from ..qdq_numpy import dequantize_np
from ..report import Change
from ..trt_patterns import (
    activation_pair,
    is_const,
    is_ignored,
    is_weighted,
    island_pairs,
    weight_tensor,
    weighted_source,
)
from .clamps import bypass_keeping_saturation
from .registry import ActionContext, register_action


@register_action("dequantize_ignored", params={}, skip_ignored=False)
def dequantize_ignored(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Keep a weighted op (the anchor) on the ignore list float: no input Q/DQ, float weights.
    Its anchors are the ignored nodes themselves, so the rule loop does not skip them."""
    w = node
    if not ctx.ignore or not is_weighted(graph, w) or not is_ignored(w, ctx.ignore):
        return []
    done = []
    pair = activation_pair(graph, w.inputs[0])
    if pair is not None:
        done.append(f"input pair {pair[0].name}")
        if not ctx.dry_run:
            graph.bypass_qdq(*pair, consumers=[w])
    wt = weight_tensor(graph, w)
    dq = graph.producer(wt) if wt is not None else None
    dq, reader = weight_dq_reader(graph, w) or (dq, w)  # xrules: DQ behind Transpose/Reshape
    if graph.is_dq(dq):
        src = dq.inputs[0]
        q = graph.producer(src)
        if graph.is_q(q) and is_const(q.inputs[0]):
            values = constant_value(q.inputs[0])
        elif is_const(src):
            p = graph.qparams(dq)
            values = dequantize_np(constant_value(src), p.scale, p.zero_point, p.axis)
        else:
            values = None
        if values is not None:
            done.append(f"weight DQ {dq.name}")
            if not ctx.dry_run:
                index = next(i for i, t in enumerate(reader.inputs) if t is dq.outputs[0])
                graph.set_input(
                    reader, index, gs.Constant(graph.unique_name(f"{wt.name}_float"), values)
                )
                graph.drop_if_unused(dq)
                if graph.is_q(q):
                    graph.drop_if_unused(q)
    if not done:
        return []
    return [Change("float", [w.name], "kept float by the ignore list: " + "; ".join(done))]


@register_action("remove_float_islands", params={}, skip_ignored=False, reverse=True)
def remove_float_islands(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Remove the Q/DQ pairs of a Q (the anchor) whose DQ feeds no op that uses an INT8 input
    (``trt_patterns.island_pairs``, which lint shares; an average pool counts as one). Anchors
    are visited in reverse topological order, so a chain of such pairs goes in one pass; the
    ignore list applies to the INT8 consumers searched for, not to the Q. The output pair of a
    weighted op belongs to weighted-output-qdq (one problem, one rule)."""
    q = node
    if not graph.is_q(q) or weighted_source(graph, q, ctx.ignore) is not None:
        return []
    found = island_pairs(graph, q, ctx.ignore)
    changes = [Change("remove", [f.q.name, f.dq.name], f.why) for f in found]
    if not ctx.dry_run:
        for f in found:
            bypass_keeping_saturation(graph, f.q, f.dq)  # the pair's clip stays (clamps.py)
    return changes
