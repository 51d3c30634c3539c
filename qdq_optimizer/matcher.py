"""Match a rule's declarative pattern against a node: local checks only, O(degree) per node."""

from __future__ import annotations

import re

import onnx_graphsurgeon as gs

from .graph import Node, QGraph, Tensor, constant_value
from .ruleset import ConsumerSpec, Match, NodeSpec


def matches(graph: QGraph, node: Node, match: Match) -> bool:
    """Does ``node`` satisfy every constraint of ``match``?"""
    if match.ops is not None and node.op not in match.ops:
        return False
    if (
        match.name is None
        and match.not_name is None
        and not match.inputs
        and match.any_input is None
        and match.consumers is None
    ):
        return True  # an op-only pattern: the common case, keep it cheap
    if not _name_ok(node.name, match.name, match.not_name):
        return False
    for i, spec in enumerate(match.inputs):
        if i >= len(node.inputs):
            return False
        if spec is not None and not tensor_matches(graph, node.inputs[i], spec):
            return False
    if match.any_input is not None and not any(
        tensor_matches(graph, t, match.any_input) for t in node.inputs
    ):
        return False
    return match.consumers is None or _consumers_ok(graph, node, match.consumers)


def tensor_matches(graph: QGraph, tensor: Tensor, spec: NodeSpec) -> bool:
    """Does the tensor (through its producer) satisfy ``spec``?"""
    if spec.constant is not None:
        is_const = isinstance(tensor, gs.Constant) or constant_value(tensor) is not None
        if is_const != spec.constant:
            return False
    producer = graph.producer(tensor)
    if spec.graph_input is not None:
        is_input = producer is None and not isinstance(tensor, gs.Constant)
        if is_input != spec.graph_input:
            return False
    if spec.ops is None and spec.name is None and spec.not_name is None:
        return True
    if producer is None:
        return False
    return node_matches(producer, spec)


def node_matches(node: Node, spec: NodeSpec) -> bool:
    if spec.ops is not None and node.op not in spec.ops:
        return False
    return _name_ok(node.name, spec.name, spec.not_name)


def _consumers_ok(graph: QGraph, node: Node, spec: ConsumerSpec) -> bool:
    consumers = [c for t in node.outputs for c in t.outputs]
    n = len(consumers)
    if spec.count is not None and n != spec.count:
        return False
    if spec.min is not None and n < spec.min:
        return False
    if spec.max is not None and n > spec.max:
        return False
    if spec.graph_output is not None:
        if any(graph.is_graph_output(t) for t in node.outputs) != spec.graph_output:
            return False
    if spec.all is not None and not all(node_matches(c, spec.all) for c in consumers):
        return False
    if spec.any is not None and not any(node_matches(c, spec.any) for c in consumers):
        return False
    return not (spec.none is not None and any(node_matches(c, spec.none) for c in consumers))


def _name_ok(name: str | None, want: re.Pattern | None, avoid: re.Pattern | None) -> bool:
    name = name or ""
    if want is not None and not want.search(name):
        return False
    return not (avoid is not None and avoid.search(name))
