"""Graph patterns TensorRT's fusions are defined over (shared by the rule actions and the lint).

Each predicate states a fact of TensorRT's builder (see ``docs/rules.md``; the op vocabulary is
in ``ops``, the commute predicate in ``commute``): which ops it fuses into a conv as an epilogue,
which Add input a residual Add fuses into. The selectors (``epilogue_pairs``, ``residual_inputs``,
``island_pairs``) are the "find" half of each rule: the rule action fixes what they return and
lint reports the same finding, so a problem is found by one piece of code. They are walks of a few steps from one node (bounded by
the shape of the pattern, not by a search budget), so whole-graph passes stay linear.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from .commute import is_const, is_int8_qdq, is_int8_tensor, joining_inputs, value_outputs
from .graph import Node, QGraph, QParams, Tensor, name_matches
from .matmul_patterns import (  # xrules
    gemm_bias_data,
    is_activation_matmul,
    is_constant_input,
    is_int8_matmul,
    weighted_matmul,
)
from .ops import CONV_OPS, FUSED_ACTIVATIONS, GATES, INT8_POOLING_OPS

# Longest conv epilogue walked back from an Add input: BatchNormalization, activation(s), SiLU.
MAX_EPILOGUE_STEPS = 8


def is_ignored(node: Node | None, patterns: Iterable[re.Pattern]) -> bool:
    """A node whose name (or module path) matches an ignore regex."""
    return node is not None and name_matches(node.name, patterns)


# ---------------------------------------------------------------------- Q/DQ pairs and weights
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


def readers_through_pairs(graph: QGraph, t: Tensor) -> tuple[list[Node], bool]:
    """The nodes that read ``t``'s value, looking through Q/DQ pairs on it (their Q and DQ are
    not readers; what reads the DQ is), and whether the value also leaves as a graph output."""
    readers: list[Node] = []
    leaves = graph.is_graph_output(t)
    for c in t.outputs:
        if not graph.is_q(c):
            readers.append(c)
            continue
        leaves = leaves or graph.is_graph_output(c.outputs[0])
        for d in c.outputs[0].outputs:
            if graph.is_dq(d):
                readers.extend(d.outputs[0].outputs)
                leaves = leaves or graph.is_graph_output(d.outputs[0])
            else:
                readers.append(d)
    return readers, leaves


def _read_only_by(graph: QGraph, t: Tensor, nodes: Iterable[Node]) -> bool:
    readers, leaves = readers_through_pairs(graph, t)
    allowed = {id(n) for n in nodes}
    return not leaves and all(id(r) in allowed for r in readers)


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


def conv_data_readers(
    graph: QGraph, dqs: Iterable[Node], accept: Callable[[Node], bool]
) -> list[Node] | None:
    """The Convs reading the DQs' outputs as their data input, each one ``accept``ed; None when
    anything else reads them (a graph output, another op, a conv reading it as a weight)."""
    convs = []
    for dq in dqs:
        if graph.is_graph_output(dq.outputs[0]):
            return None
        for c in dq.outputs[0].outputs:
            if c.op != "Conv" or c.inputs[0] is not dq.outputs[0] or dq.outputs[0] in c.inputs[1:]:
                return None
            if not accept(c):
                return None
            convs.append(c)
    return convs or None


def per_tensor_int8(graph: QGraph, node: Node) -> QParams | None:
    """The parameters of a Q or DQ in signed symmetric per-tensor int8 (one scale, zero point
    0, not blocked), else None."""
    try:
        p = graph.qparams(node)
    except ValueError:
        return None
    if p.dtype != onnx.TensorProto.INT8 or p.per_axis or p.scale.size != 1:
        return None
    if node.attrs.get("block_size") or (p.zero_point is not None and np.any(p.zero_point != 0)):
        return None
    return p


def output_channel_axis(node: Node, weight_rank: int = 2) -> int | None:
    """The axis of a weighted op's weight that TensorRT quantizes per channel: its output
    channels (0 for Conv, 1 for ConvTranspose, Gemm by transB, the last for MatMul)."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "MatMul":
        return weight_rank - 1
    return None


def weight_axis(graph: QGraph, t: Tensor) -> int | None:
    """The output-channel axis of a weight read by a Conv/ConvTranspose/Gemm/MatMul (None: the
    tensor is not such a weight, or its readers disagree: quantize it per-tensor)."""
    axes = set()
    for c in t.outputs:
        if len(c.inputs) < 2 or c.inputs[1] is not t:
            return None
        axis = output_channel_axis(c, len(t.shape) if t.shape is not None else 2)
        if axis is None:
            return None
        axes.add(axis)
    return axes.pop() if len(axes) == 1 else None


def is_weighted(graph: QGraph, node: Node | None) -> bool:
    return node is not None and weight_tensor(graph, node) is not None


def weight_quantized(graph: QGraph, node: Node) -> bool:
    if node.op in ("Gemm", "MatMul"):  # xrules: the weight DQ may sit behind Transpose/Reshape
        return (wm := weighted_matmul(graph, node)) is not None and wm.weight.quantized
    w = weight_tensor(graph, node)
    return w is not None and is_weight_dq(graph, graph.producer(w))


def input_quantized(graph: QGraph, node: Node) -> bool:
    return bool(node.inputs) and is_int8_tensor(graph, node.inputs[0])


def is_quantized_weighted(graph: QGraph, node: Node) -> bool:
    """A weighted op TensorRT runs in INT8: data input INT8 and weight through a DQ."""
    return (
        is_weighted(graph, node) and input_quantized(graph, node) and weight_quantized(graph, node)
    )


# ---------------------------------------------------------------------- epilogues
def silu_parts(graph: QGraph, mul: Node | None) -> tuple[Tensor, Node] | None:
    """(x, gate) when ``mul`` computes ``x * gate(x)`` with gate Sigmoid (SiLU) or HardSigmoid
    (hard-swish), its inputs possibly behind activation Q/DQ pairs. The one SiLU test."""
    if mul is None or mul.op != "Mul" or len(mul.inputs) != 2:
        return None
    a, b = (strip_qdq(graph, t) for t in mul.inputs)
    for x, g in ((a, b), (b, a)):
        gate = graph.producer(g)
        if gate is not None and gate.op in GATES and strip_qdq(graph, gate.inputs[0]) is x:
            return x, gate
    return None


def epilogue_source(graph: QGraph, t: Tensor) -> Node | None:
    """The weighted op whose fused epilogue (BN, activation, SiLU) produces ``t``, if any.
    Walks back through activation Q/DQ pairs: TensorRT fuses them only when they are gone, but
    the branch is still a conv branch."""
    for _ in range(MAX_EPILOGUE_STEPS):
        t = strip_qdq(graph, t)
        p = graph.producer(t)
        if p is None:
            return None
        if is_weighted(graph, p):
            return p
        if p.op == "BatchNormalization" or p.op in FUSED_ACTIVATIONS:
            t = p.inputs[0]
            continue
        parts = silu_parts(graph, p)
        if parts is None:
            return None
        t = parts[0]
    return None


@dataclass
class PairFinding:
    """A Q/DQ pair a rule removes for some of the DQ's readers (all when ``consumers`` is None)."""

    q: Node
    dq: Node
    consumers: list[Node] | None
    why: str


def _pairs_read_by(graph: QGraph, t: Tensor, keep, why: str) -> list[PairFinding]:
    found: list[PairFinding] = []
    for q in graph.quantizers_of(t):
        for dq in q.outputs[0].outputs:
            if not graph.is_dq(dq) or activation_pair(graph, dq.outputs[0]) is None:
                continue
            readers = [c for c in dq.outputs[0].outputs if keep(c)]
            if readers:
                names = ", ".join(c.name for c in readers)
                found.append(PairFinding(q, dq, readers, f"{why} (rewired {names})"))
    return found


def epilogue_pairs(graph: QGraph, w: Node) -> list[PairFinding]:
    """Q/DQ pairs between the weighted op ``w`` and its BN/activation, and inside its SiLU: each
    breaks TensorRT's conv + BN + activation fusion. The pair at the activation's output is not
    one of them (other rules decide about it)."""
    found: list[PairFinding] = []
    x = w.outputs[0]
    for _ in range(3):  # conv -> [BN] -> activation

        def epilogue_reader(c: Node, x: Tensor = x) -> bool:
            if c.op == "BatchNormalization" or c.op in FUSED_ACTIVATIONS:
                return True
            parts = silu_parts(graph, c)
            return parts is not None and parts[0] is x

        found += _pairs_read_by(
            graph, x, epilogue_reader, f"Q/DQ between '{w.name}' and its fused epilogue"
        )
        readers, _ = readers_through_pairs(graph, x)
        bn = [c for c in readers if c.op == "BatchNormalization"]
        if len(bn) == 1 and len(readers) == 1:
            x = bn[0].outputs[0]
            continue
        for gate in [c for c in readers if c.op in GATES]:

            def silu_mul(c: Node, x: Tensor = x) -> bool:
                parts = silu_parts(graph, c)
                return parts is not None and parts[0] is x

            found += _pairs_read_by(
                graph, gate.outputs[0], silu_mul, f"Q/DQ inside the SiLU after '{w.name}'"
            )
        break
    return found


# ---------------------------------------------------------------------- residual Add
def fusion_target(graph: QGraph, add: Node, index: int) -> Node | None:
    """The weighted op TensorRT can fuse ``add`` into through input ``index``: the input is its
    output after a fusable epilogue (BN, activation, SiLU), and no value on that path (conv
    output, epilogue intermediates, the input itself) is read by anything outside it, since a
    fused value is never materialised. Q/DQ pairs on the path do not count: the rules remove
    them. None when there is no such op."""
    t = strip_qdq(graph, add.inputs[index])
    if is_const(t) or not _read_only_by(graph, t, [add]):
        return None
    for _ in range(MAX_EPILOGUE_STEPS):
        p = graph.producer(t)
        if p is None:
            return None
        if is_weighted(graph, p):
            return p
        if p.op == "BatchNormalization" or p.op in FUSED_ACTIVATIONS:
            t = strip_qdq(graph, p.inputs[0])
            if not _read_only_by(graph, t, [p]):
                return None
            continue
        if (bias_data := gemm_bias_data(graph, p)) is not None:  # xrules: GEMM + its bias Add
            t = strip_qdq(graph, bias_data)
            if not _read_only_by(graph, t, [p]):
                return None
            continue
        parts = silu_parts(graph, p)
        if parts is None:
            return None
        x, gate = parts
        if not _read_only_by(graph, gate.outputs[0], [p]) or not _read_only_by(graph, x, [gate, p]):
            return None
        t = x
    return None


def residual_inputs(graph: QGraph, add: Node) -> tuple[int, int] | None:
    """(conv-branch input index, skip input index) of a residual Add, by which input TensorRT
    can fuse the Add into (``fusion_target``); None when the Add is not residual.

    Constants are never skips (``Add(conv, 3)`` of a hard-swish is not residual), nor is an Add
    of one tensor with itself. When both inputs are fusable (sibling conv branches: ResNet
    downsample, RepC3), a placement that is already right (exactly one input INT8) is kept, so
    a producer's correct quantizers stay; otherwise the branch is the input whose conv comes
    later in topological order. Exact and stable: applying the answer keeps it."""
    if add.op != "Add" or len(add.inputs) != 2 or any(is_const(t) for t in add.inputs):
        return None
    if any(is_constant_input(graph, t) for t in add.inputs):  # xrules: a bias Add, any form
        return None
    a, b = (strip_qdq(graph, t) for t in add.inputs)
    if a is b:
        return None
    fa, fb = fusion_target(graph, add, 0), fusion_target(graph, add, 1)
    if fa is None and fb is None:
        return None
    if fb is None:
        return (0, 1)
    if fa is None:
        return (1, 0)
    qa, qb = (is_int8_tensor(graph, t) for t in add.inputs)
    if qa != qb:
        return (0, 1) if qb else (1, 0)
    return (0, 1) if graph.position(fa) > graph.position(fb) else (1, 0)


# ---------------------------------------------------------------------- INT8 consumers
def feeds_int8(graph: QGraph, t: Tensor, ignore: Iterable[re.Pattern] = ()) -> bool:
    """Does an INT8 value on ``t`` reach an op that uses an INT8 input? Those are: the data input
    of a weighted op (not ignored), a Q (the value is requantized: TensorRT keeps the path INT8),
    the skip input of a residual Add, an average pool (``ops.INT8_POOLING_OPS``), or such a
    consumer behind ops that commute with Q/DQ."""
    ignore = list(ignore)
    todo, seen = deque([t]), set()
    while todo:
        cur = todo.popleft()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        for c in cur.outputs:
            if graph.is_q(c) or c.op in INT8_POOLING_OPS:
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
                todo.extend(value_outputs(c))
    return False


def island_pairs(graph: QGraph, q: Node, ignore: Iterable[re.Pattern] = ()) -> list[PairFinding]:
    """The pairs of an activation Q whose DQ value reaches no op that uses an INT8 input: the
    producer emits INT8 only to convert it back (a Reformat for nothing). None when something
    reads the int8 tensor itself or the Q's output is a graph output."""
    if not graph.is_q(q) or is_const(q.inputs[0]) or graph.is_graph_output(q.outputs[0]):
        return []
    dqs = [c for c in q.outputs[0].outputs if graph.is_dq(c)]
    if not dqs or len(dqs) != len(q.outputs[0].outputs):
        return []
    found = []
    for dq in dqs:
        out = dq.outputs[0]
        if activation_pair(graph, out) is None or feeds_int8(graph, out, ignore):
            continue
        readers = ", ".join(c.name for c in out.outputs) or "nothing"
        found.append(PairFinding(q, dq, None, f"DQ feeds only float ops ({readers})"))
    return found


def weighted_source(graph: QGraph, q: Node, ignore: Iterable[re.Pattern] = ()) -> Node | None:
    """The weighted op (not ignored) whose output ``q`` quantizes: its output pair belongs to
    weighted-output-qdq, not to float-islands. A pair in front of a graph output is not
    weighted-output-qdq's (it keeps those): float-islands removes it, as it always has."""
    src = graph.producer(q.inputs[0])
    if not is_weighted(graph, src) or is_ignored(src, ignore):
        return None
    if any(graph.is_graph_output(c.outputs[0]) for c in q.outputs[0].outputs if graph.is_dq(c)):
        return None
    return src
