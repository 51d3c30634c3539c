"""Graph patterns TensorRT's fusions are defined over (shared by the rule actions and the lint).

Each predicate states a fact of TensorRT's builder (see ``docs/rules.md``): which ops it fuses
into a conv as an epilogue, which ops Q/DQ commute with, what a residual Add looks like. They are
walks of a few steps from one node, so whole-graph passes stay linear.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

import onnx_graphsurgeon as gs

from .graph import Node, QGraph, Tensor, constant_value, name_matches
from .matmul_patterns import (  # xrules
    gemm_bias_data,
    is_activation_matmul,
    is_constant_input,
    is_int8_matmul,
    weighted_matmul,
)
from .scale_groups import is_int8_qdq, joining_inputs

# Activations TensorRT fuses into the preceding conv/gemm (SiLU appears as Sigmoid + Mul).
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSwish", "HardSigmoid"})
CONV_OPS = frozenset({"Conv", "ConvTranspose"})


def is_const(t: Tensor) -> bool:
    return isinstance(t, gs.Constant) or constant_value(t) is not None


def is_ignored(node: Node | None, patterns: Iterable[re.Pattern]) -> bool:
    """A node whose name (or module path) matches an ignore regex."""
    return node is not None and name_matches(node.name, patterns)


def activation_pair(graph: QGraph, t: Tensor) -> tuple[Node, Node] | None:
    """(Q, DQ), both int8, when ``t`` is the DQ output of a Q on a non-constant tensor."""
    pair = graph.qdq_pair_on(t)
    if pair is None or is_const(pair[0].inputs[0]):
        return None
    if not (is_int8_qdq(graph, pair[0]) and is_int8_qdq(graph, pair[1])):
        return None
    return pair


def strip_qdq(graph: QGraph, t: Tensor) -> Tensor:
    """The float tensor behind an activation Q/DQ pair (``t`` itself when there is none)."""
    pair = activation_pair(graph, t)
    return pair[0].inputs[0] if pair else t


def is_weight_dq(graph: QGraph, dq: Node | None) -> bool:
    """A DQ whose input is a constant (int8 initializer) or a Q of a constant (pair form)."""
    if not graph.is_dq(dq):
        return False
    src = dq.inputs[0]
    if is_const(src):
        return True
    q = graph.producer(src)
    return graph.is_q(q) and is_const(q.inputs[0])


def weight_tensor(graph: QGraph, node: Node) -> Tensor | None:
    """The weight input of a weighted op: Conv/ConvTranspose input 1, Gemm/MatMul input 1 when it
    is constant (directly or through a weight DQ); None for activation x activation MatMul."""
    if node.op in CONV_OPS:
        return node.inputs[1] if len(node.inputs) > 1 else None
    if node.op in ("Gemm", "MatMul") and len(node.inputs) > 1:
        if weighted_matmul(graph, node) is not None:  # xrules: every export form of the weight
            return node.inputs[1]
    return None


def is_weighted(graph: QGraph, node: Node | None) -> bool:
    return node is not None and weight_tensor(graph, node) is not None


def weight_quantized(graph: QGraph, node: Node) -> bool:
    if node.op in ("Gemm", "MatMul"):  # xrules: the weight DQ may sit behind Transpose/Reshape
        return (wm := weighted_matmul(graph, node)) is not None and wm.weight.quantized
    w = weight_tensor(graph, node)
    return w is not None and is_weight_dq(graph, graph.producer(w))


def input_quantized(graph: QGraph, node: Node) -> bool:
    return bool(node.inputs) and graph.is_int8_tensor(node.inputs[0])


def is_quantized_weighted(graph: QGraph, node: Node) -> bool:
    """A weighted op TensorRT runs in INT8: data input INT8 and weight through a DQ."""
    return (
        is_weighted(graph, node) and input_quantized(graph, node) and weight_quantized(graph, node)
    )


def epilogue_source(graph: QGraph, t: Tensor) -> Node | None:
    """The weighted op whose fused epilogue (BN, activation, SiLU) produces ``t``, if any.
    Walks back through activation Q/DQ pairs: TensorRT fuses them only when they are gone, but
    the branch is still a conv branch."""
    seen = 0
    while seen < 8:
        seen += 1
        t = strip_qdq(graph, t)
        p = graph.producer(t)
        if p is None:
            return None
        if is_weighted(graph, p):
            return p
        if p.op == "BatchNormalization" or p.op in ACTIVATIONS:
            t = p.inputs[0]
            continue
        if (bias_data := gemm_bias_data(graph, p)) is not None:  # xrules: GEMM + its bias Add
            t = bias_data
            continue
        if p.op == "Mul" and len(p.inputs) == 2:
            a, b = (strip_qdq(graph, x) for x in p.inputs)
            pa, pb = graph.producer(a), graph.producer(b)
            if (
                pb is not None
                and pb.op in ("Sigmoid", "HardSigmoid")
                and strip_qdq(graph, pb.inputs[0]) is a
            ):
                t = a
                continue
            if (
                pa is not None
                and pa.op in ("Sigmoid", "HardSigmoid")
                and strip_qdq(graph, pa.inputs[0]) is b
            ):
                t = b
                continue
        return None
    return None


def residual_inputs(graph: QGraph, add: Node) -> tuple[int, int] | None:
    """(conv-branch input index, skip input index) of a residual Add, by structure.

    The conv branch ends in a weighted op's epilogue; the skip is the other input. When both end
    in a conv epilogue, the skip is the input the other branch descends from (the common
    ancestor), else the branch with fewer exclusive weighted ops on its path."""
    if add.op != "Add" or len(add.inputs) != 2 or any(is_const(t) for t in add.inputs):
        return None
    if any(is_constant_input(graph, t) for t in add.inputs):  # xrules: a bias Add, any form
        return None
    a, b = (strip_qdq(graph, t) for t in add.inputs)
    if a is b:
        return None
    ca, cb = epilogue_source(graph, a), epilogue_source(graph, b)
    if ca is None and cb is None:
        return None
    if ca is not None and cb is None:
        return (0, 1)
    if cb is not None and ca is None:
        return (1, 0)
    pa, pb = graph.producer(a), graph.producer(b)
    a_in_b, wb = _reaches_back(graph, pb, pa)
    b_in_a, wa = _reaches_back(graph, pa, pb)
    if a_in_b and not b_in_a:
        return (1, 0)
    if b_in_a and not a_in_b:
        return (0, 1)
    if wa == wb:
        return None
    return (0, 1) if wa > wb else (1, 0)


def _reaches_back(graph: QGraph, start: Node, target: Node, limit: int = 256) -> tuple[bool, int]:
    """Is ``target`` an ancestor of ``start`` (searching at most ``limit`` nodes back, so a residual
    test stays O(1) per Add)? Also returns the weighted ops seen on the way (the branch depth)."""
    todo, seen, weighted = deque([start]), {id(start)}, 0
    while todo and len(seen) <= limit:
        n = todo.popleft()
        weighted += is_weighted(graph, n)
        for t in n.inputs:
            p = graph.producer(t)
            if p is None or id(p) in seen:
                continue
            if p is target:
                return True, weighted
            seen.add(id(p))
            todo.append(p)
    return False, weighted


def feeds_int8(graph: QGraph, t: Tensor, ignore: Iterable[re.Pattern] = ()) -> bool:
    """Does an INT8 value on ``t`` reach an op that uses an INT8 input? Those are: the data input
    of a weighted op (not ignored), a Q (the value is requantized: TensorRT keeps the path INT8),
    the skip input of a residual Add, or such a consumer behind ops that commute with Q/DQ."""
    ignore = list(ignore)
    todo, seen = deque([t]), set()
    while todo:
        cur = todo.popleft()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        for c in cur.outputs:
            if graph.is_q(c):
                return True
            if is_activation_matmul(graph, c) and is_int8_matmul(graph, c):  # xrules: INT8 BMM
                return True
            if is_weighted(graph, c) and c.inputs[0] is cur and not is_ignored(c, ignore):
                return True
            if c.op == "Add":
                split = residual_inputs(graph, c)
                if split is not None and c.inputs[split[1]] is cur:
                    return True
                continue
            if any(i is cur for i in joining_inputs(graph, c)):
                todo.extend(o for o in c.outputs[: 1 if c.op == "MaxPool" else None])
    return False
