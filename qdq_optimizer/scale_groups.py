"""Scale groups: tensors TensorRT must carry in one INT8 scale, found by union-find.

TensorRT propagates Q backwards and DQ forwards through ops that commute with quantization and
merges a propagated pair only when the scales are equal; a Concat runs (or is eliminated) in INT8
only when all its inputs and the Q that reads its output share one scale. So every tensor joined
by such an op, and every Q that reads one of those tensors, must agree. We build the groups over
the whole graph with ``networkx.utils.UnionFind`` (transitively: chains of concats, pools and
resizes end up in one group, which pairwise overwriting misses).

Joined tensors:
- all data inputs and the output of every Concat;
- input and outputs of MaxPool (while its quantizers have positive scales), Reshape, Transpose,
  Flatten, Squeeze, Unsqueeze, Slice, Split, Identity, Pad with zero constant padding, and
  nearest-mode Resize/Upsample;
- the input of a Q and the output of the DQ that reads it (the same value on both sides of a pair).
A group's quantizers are the per-tensor Q nodes that read any of its tensors. Which ops join is
the one commute predicate, ``commute.joining_inputs`` (vocabulary in ``ops``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from networkx.utils import UnionFind

from .commute import is_const, is_int8_qdq, joining_inputs, value_outputs
from .graph import Node, QGraph, Tensor

__all__ = [
    "ScaleGroup",
    "joining_inputs",
    "paired_dqs",
    "scale_groups",
]


@dataclass
class ScaleGroup:
    """Tensors that must share one INT8 scale, with the quantizers that set it."""

    tensors: list[Tensor]
    quantizers: list[Node]  # per-tensor Q nodes reading a group tensor, topological order
    ops: list[Node] = field(default_factory=list)  # the joining ops (Concat, MaxPool, ...)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def has(self, op: str) -> bool:
        return any(n.op == op for n in self.ops)


def _positive(graph: QGraph, q: Node) -> bool:
    try:
        return bool(np.all(graph.qparams(q).scale > 0))
    except ValueError:
        return False


def _per_tensor_q(graph: QGraph, node: Node) -> bool:
    """An int8 per-tensor activation quantizer (uint8/int4/fp8 ones are not TensorRT INT8)."""
    if not graph.is_q(node) or is_const(node.inputs[0]) or not is_int8_qdq(graph, node):
        return False
    try:
        return not graph.qparams(node).per_axis
    except ValueError:
        return False


def scale_groups(graph: QGraph, min_tensors: int = 2) -> list[ScaleGroup]:
    """All scale groups with at least ``min_tensors`` tensors or two quantizers, in topological
    order of their first tensor (deterministic)."""
    order = graph.topo_nodes()
    uf = UnionFind()
    first_seen: dict[str, int] = {}
    by_name: dict[str, Tensor] = {}
    joiners: dict[str, list[Node]] = {}

    def see(t: Tensor, i: int) -> None:
        if t.name not in first_seen:
            first_seen[t.name] = i
            by_name[t.name] = t
            uf[t.name]  # noqa: B018 - registers the element

    for t in graph.gs.inputs:
        see(t, -1)
    for i, node in enumerate(order):
        for t in node.inputs:
            if t.name and not isinstance(t, gs.Constant):
                see(t, i)
        for t in node.outputs:
            if t.name:
                see(t, i)
        ins = joining_inputs(graph, node)
        if not ins:
            if graph.is_dq(node):
                q = graph.producer(node.inputs[0])
                if _per_tensor_q(graph, q) and q.inputs[0].name:
                    uf.union(q.inputs[0].name, node.outputs[0].name)
            continue
        if node.op == "MaxPool":
            touching = [c for t in (*ins, *node.outputs[:1]) for c in graph.quantizers_of(t)]
            if not all(_positive(graph, q) for q in touching):
                continue
        outs = value_outputs(node)
        names = [t.name for t in (*ins, *outs)]
        uf.union(*names)
        joiners.setdefault(names[0], []).append(node)

    members: dict[str, list[str]] = {}
    for name in sorted(first_seen, key=first_seen.__getitem__):
        members.setdefault(uf[name], []).append(name)
    op_of: dict[str, list[Node]] = {}
    for key, nodes in joiners.items():
        op_of.setdefault(uf[key], []).extend(nodes)

    topo_index = {id(n): i for i, n in enumerate(order)}
    groups: list[ScaleGroup] = []
    for root, names in members.items():
        tensors = [by_name[n] for n in names]
        qs = [c for t in tensors for c in t.outputs if _per_tensor_q(graph, c)]
        qs = sorted({id(q): q for q in qs}.values(), key=lambda q: topo_index[id(q)])
        if len(tensors) < min_tensors and len(qs) < 2:
            continue
        ops = sorted(op_of.get(root, []), key=lambda n: topo_index[id(n)])
        groups.append(ScaleGroup(tensors, qs, ops))
    return groups


def paired_dqs(graph: QGraph, q: Node) -> list[Node]:
    """DQ nodes reading the output of ``q`` (they must carry the Q's scale)."""
    return [c for c in q.outputs[0].outputs if graph.is_dq(c)]
