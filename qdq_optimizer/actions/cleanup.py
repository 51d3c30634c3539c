"""Generic cleanup actions: each rewrite computes exactly what the input computed (bit-exact
under ONNX Runtime), so they are safe for any producer and any backend.

- ``collapse_dq_q``: ``x(int) -> DQ(s, z) -> Q(s, z)`` is the identity on ``x``: (x - z) * s / s
  rounds back to x for every representable x when s is a finite positive normal float. The Q's
  consumers read ``x`` directly.
- ``merge_duplicates``: two Q (or two DQ) nodes reading the same tensor with bit-equal parameters
  compute the same tensor; the later one's consumers read the first one's output.
- ``drop_dead_qdq``: a DQ whose output nothing reads (and is no graph output) is removed, then its
  Q if that is now unused too.
"""

from __future__ import annotations

import numpy as np

from ..graph import DEQUANTIZE, QUANTIZE, Node, QGraph, QParams
from ..report import Change
from .registry import ActionContext, register_action

# Scales outside this range could overflow or lose precision in (x - z) * s / s.
_MIN_SCALE = float(np.finfo(np.float32).tiny) * 2**10
_MAX_SCALE = float(np.finfo(np.float32).max) / 2**17


def _plain(node: Node) -> bool:
    """Q/DQ without blocked quantization or other exotic attributes we do not reason about."""
    return not node.attrs.get("block_size") and set(node.attrs) <= {"axis", "output_dtype"}


def _qparams(graph: QGraph, node: Node) -> QParams | None:
    try:
        return graph.qparams(node)
    except ValueError:  # non-constant scale: leave it alone
        return None


def _exact_scale(p: QParams) -> bool:
    s = p.scale.astype(np.float64)
    return bool(np.all(np.isfinite(s)) and np.all(s >= _MIN_SCALE) and np.all(s <= _MAX_SCALE))


@register_action("collapse_dq_q", params={}, local=True)
def collapse_dq_q(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Make the consumers of Q(DQ(x)) read x when the DQ and Q parameters are bit-equal."""
    q = node
    if q is None or q.op != QUANTIZE or not _plain(q):
        return []
    dq = graph.producer(q.inputs[0])
    if dq is None or dq.op != DEQUANTIZE or not _plain(dq) or ctx.is_ignored(dq):
        return []
    pq, pdq = _qparams(graph, q), _qparams(graph, dq)
    if pq is None or pdq is None or not pq.same_as(pdq) or not _exact_scale(pq):
        return []
    src, q_out = dq.inputs[0], q.outputs[0]
    if graph.is_graph_output(q_out):
        return []  # keeping the output name would need an Identity: no gain
    readers = [c.name for c in q_out.outputs]
    change = Change(
        "rewire",
        [dq.name, q.name],
        f"{len(readers)} consumer(s) of '{q.name}' read '{src.name}' directly",
    )
    if ctx.dry_run:
        return [change]
    graph.replace_uses(q_out, src)
    graph.drop_if_unused(q)
    graph.drop_if_unused(dq)
    return [change]


def _same_attrs(a: Node, b: Node) -> bool:
    return a.attrs == b.attrs and a.domain == b.domain


@register_action("merge_duplicates", params={}, local=True)
def merge_duplicates(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Merge Q (or DQ) nodes that read the anchor's input tensor with bit-equal parameters.

    The earliest one in topological order survives; later twins' consumers read its output."""
    if node is None or node.op not in (QUANTIZE, DEQUANTIZE):
        return []
    src = node.inputs[0]
    readers = src.outputs
    if len(readers) < 2:
        return []  # the common case: nothing else reads this tensor
    op = node.op
    twins = [c for c in readers if c.op == op and c is not node]
    if not twins or not _plain(node):
        return []
    twins = [c for c in twins if _plain(c)]
    if not twins:
        return []
    group = sorted([node, *twins], key=graph.position)
    keep = group[0]
    if keep is not node:
        return []  # the survivor's own visit merges the group: one change per twin, once
    pk = _qparams(graph, keep)
    if pk is None:
        return []
    changes: list[Change] = []
    for twin in group[1:]:
        if ctx.is_ignored(twin) or not _same_attrs(keep, twin):
            continue
        pt = _qparams(graph, twin)
        if pt is None or not pk.same_as(pt):
            continue
        if any(graph.is_graph_output(t) or not t.outputs for t in twin.outputs):
            continue  # unused twins are drop-dead-qdq's; output names must stay
        changes.append(
            Change("merge", [keep.name, twin.name], f"'{twin.name}' duplicates '{keep.name}'")
        )
        if not ctx.dry_run:
            graph.replace_uses(twin.outputs[0], keep.outputs[0])
            graph.drop_if_unused(twin)
    return changes


@register_action("drop_dead_qdq", params={}, local=True)
def drop_dead_qdq(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Remove a DQ whose output feeds nothing, and its Q when that is left unused."""
    dq = node
    if dq is None or dq.op != DEQUANTIZE:
        return []
    if any(t.outputs or graph.is_graph_output(t) for t in dq.outputs):
        return []
    q = graph.producer(dq.inputs[0])
    removed = [dq.name]
    q_goes = (
        q is not None
        and q.op == QUANTIZE
        and not ctx.is_ignored(q)
        and not graph.is_graph_output(q.outputs[0])
        and all(c is dq for c in q.outputs[0].outputs)
    )
    if q_goes:
        removed.append(q.name)
    change = Change("remove", removed, "dequantized output is never read")
    if ctx.dry_run:
        return [change]
    graph.remove_node(dq)
    if q_goes:
        graph.drop_if_unused(q)
    return [change]
