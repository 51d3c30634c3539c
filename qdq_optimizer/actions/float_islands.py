"""Rule 5: float islands and the ignore list.

- ``dequantize_ignored``: weighted ops whose name (or module path: ``/model.105/m.0/Conv`` reads
  as ``model.105.m.0.Conv``) matches an ``ignore`` regex are kept float, as the seed's ignore
  policy does for the Detect head: the Q/DQ on their data input is bypassed for them and their
  weight becomes the float values (the original float weight in pair form, else the DQ's values).
- ``remove_float_islands``: a Q/DQ pair whose DQ feeds only ops TensorRT runs in float (Sigmoid,
  Softmax, Mul/Add of a decode, graph outputs), with no INT8 consumer downstream through ops that
  commute with Q/DQ, makes the producer emit INT8 only to convert it back: it costs a Reformat and
  buys nothing. Processed in reverse topological order, so a chain of such pairs goes in one pass.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..graph import Node, QGraph, constant_value
from ..report import Change
from ..trt_patterns import (
    activation_pair,
    feeds_int8,
    is_const,
    is_ignored,
    is_weighted,
    weight_tensor,
)
from . import ActionContext, register_action
from .weighted import dequantize_np


@register_action("dequantize_ignored", params={})
def dequantize_ignored(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Keep weighted ops on the ignore list float: no input Q/DQ, float weights."""
    changes: list[Change] = []
    if not ctx.ignore:
        return changes
    for w in list(graph.topo_nodes()):
        if not is_weighted(graph, w) or not is_ignored(w, ctx.ignore):
            continue
        done = []
        pair = activation_pair(graph, w.inputs[0])
        if pair is not None:
            done.append(f"input pair {pair[0].name}")
            if not ctx.dry_run:
                graph.bypass_qdq(*pair, consumers=[w])
        wt = weight_tensor(graph, w)
        dq = graph.producer(wt) if wt is not None else None
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
                    index = next(i for i, t in enumerate(w.inputs) if t is wt)
                    graph.set_input(
                        w, index, gs.Constant(graph.unique_name(f"{wt.name}_float"), values)
                    )
                    graph.drop_if_unused(dq)
                    if graph.is_q(q):
                        graph.drop_if_unused(q)
        if done:
            changes.append(
                Change("float", [w.name], "kept float by the ignore list: " + "; ".join(done))
            )
    return changes


@register_action("remove_float_islands", params={})
def remove_float_islands(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Remove Q/DQ pairs whose DQ feeds no op that uses an INT8 input."""
    changes: list[Change] = []
    for q in reversed(list(graph.nodes_of("QuantizeLinear"))):
        if is_const(q.inputs[0]) or graph.is_graph_output(q.outputs[0]) or not graph.contains(q):
            continue
        dqs = [c for c in q.outputs[0].outputs if graph.is_dq(c)]
        if not dqs or len(dqs) != len(q.outputs[0].outputs):
            continue  # something reads the int8 tensor itself
        for dq in dqs:
            out = dq.outputs[0]
            if activation_pair(graph, out) is None or feeds_int8(graph, out, ctx.ignore):
                continue
            readers = ", ".join(c.name for c in out.outputs) or "a graph output"
            changes.append(
                Change("remove", [q.name, dq.name], f"DQ feeds only float ops ({readers})")
            )
            if not ctx.dry_run:
                graph.bypass_qdq(q, dq)
    return changes
