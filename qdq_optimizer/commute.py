"""The one commute predicate: which data inputs an op joins to its output's value (a Q/DQ
commutes through it: TensorRT propagates Q backwards and DQ forwards), and what TensorRT therefore
sees as an INT8 tensor. Scale groups, ``is_int8_tensor``, the INT8-consumer search of the rules
and lint, and the MatMul patterns all use these (they once kept two lists that disagreed).
The op sets are in ``ops``. Imports only ``graph`` and ``ops``, so any pattern module can build on
it without a cycle.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .asymmetric import INT_RANGES
from .graph import Node, QGraph, Tensor, constant_value
from .ops import DATA_MOVEMENT_OPS, OFFSET_COMMUTING_OPS


def is_const(t: Tensor) -> bool:
    return isinstance(t, gs.Constant) or constant_value(t) is not None


def is_int8_qdq(graph: QGraph, node: Node) -> bool:
    """A plain int8 Q or DQ (the only kind TensorRT's INT8 rules are about); uint8, int4, fp8 and
    blocked quantization pass through every rule untouched."""
    if node.attrs.get("block_size") or not set(node.attrs) <= {"axis", "output_dtype"}:
        return False
    try:
        return graph.qparams(node).dtype == onnx.TensorProto.INT8
    except ValueError:
        return False


def becomes_int8(graph: QGraph, node: Node) -> bool:
    """A Q or DQ TensorRT runs as INT8 once symmetric-int8 has converted it (int8, uint8); not
    int4 (TensorRT's other Q/DQ type the rules pass through) nor blocked quantization."""
    if node.attrs.get("block_size"):
        return False
    try:
        return graph.qparams(node).dtype in INT_RANGES
    except ValueError:  # a non-constant scale: refused by validation before any rule runs
        return True


# ---------------------------------------------------------------------- commuting (one predicate)
def _attr_str(node: Node, key: str, default: str) -> str:
    value = node.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def joining_inputs(graph: QGraph, node: Node) -> list[Tensor]:
    """Data inputs that ``node`` joins to its outputs' value, scale-wise: the inputs a Q/DQ
    commutes through ``node`` from ([] when it does not commute). The one commute predicate:
    scale groups, INT8-ness of a tensor and the search for INT8 consumers all use it."""
    op = node.op
    if op == "Concat":
        return [t for t in node.inputs if t.name and not is_const(t)]
    if not node.inputs or is_const(node.inputs[0]):
        return []
    if op in DATA_MOVEMENT_OPS:
        return [node.inputs[0]]
    if op == "MaxPool":
        if len(node.outputs) > 1 and node.outputs[1].outputs:  # indices output is not a value
            return []
        return [node.inputs[0]]
    if op == "Pad":
        if _attr_str(node, "mode", "constant") != "constant":
            return []
        if len(node.inputs) > 2 and node.inputs[2].name:
            value = constant_value(node.inputs[2])
            if value is None or np.any(np.asarray(value) != 0):
                return []
        return [node.inputs[0]]
    if op in ("Resize", "Upsample"):
        return [node.inputs[0]] if _attr_str(node, "mode", "nearest") == "nearest" else []
    return []


def offset_inputs(node: Node) -> list[Tensor]:
    """Data inputs through which ``node`` carries one constant offset: when each of them is
    ``x - c`` (one ``c``), each of its value outputs is ``y - c`` ([] when it does not). Unlike a
    Q/DQ, an offset passes linear interpolation and averaging (their weights sum to one) but not
    zero padding."""
    op = node.op
    if op not in OFFSET_COMMUTING_OPS or not node.inputs:
        return []
    if op == "Concat":
        ins = [t for t in node.inputs if t.name]
        return [] if any(is_const(t) for t in ins) else ins
    if is_const(node.inputs[0]):
        return []
    if op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].outputs:
        return []
    if op in ("Resize", "Upsample"):
        if _attr_str(node, "mode", "nearest") not in ("nearest", "linear"):
            return []
        if _attr_str(node, "coordinate_transformation_mode", "") == "tf_crop_and_resize":
            return []  # out-of-box points take the fixed extrapolation value
    if op == "AveragePool" and node.attrs.get("count_include_pad", 0):
        auto = _attr_str(node, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER") or any(node.attrs.get("pads", [])):
            return []  # the zeros it averages in would not move
    return [node.inputs[0]]


def value_outputs(node: Node) -> list[Tensor]:
    """The outputs a commuting op carries its input's value to (not MaxPool's indices)."""
    if node.op == "MaxPool":
        return node.outputs[:1]
    return [t for t in node.outputs if t.name]


def is_int8_tensor(graph: QGraph, tensor: Tensor) -> bool:
    """True when TensorRT sees ``tensor`` as INT8: produced by an INT8 DQ (``becomes_int8``),
    directly or through ops that commute with quantization (TensorRT propagates DQ forward
    through them)."""
    seen: set[int] = set()
    todo = deque([tensor])
    while todo:
        t = todo.popleft()
        if id(t) in seen:
            continue
        seen.add(id(t))
        p = graph.producer(t)
        if p is None:
            return False
        if graph.is_dq(p):
            if not becomes_int8(graph, p):
                return False  # an FP8 (or int4) tensor is not INT8: no INT8 rule applies
            continue
        ins = joining_inputs(graph, p)
        if not ins:
            return False
        todo.extend(ins)
    return True
