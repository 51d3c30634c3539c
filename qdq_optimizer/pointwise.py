"""Chains of elementwise ops over one tensor, and the least value they compute.

An activation's output range decides how many int8 codes a Q on it can use: hard-swish never
goes below -3/8 and SiLU never below -0.2785, so a symmetric int8 grid over ``[-a, a]`` leaves
most of its negative codes unused (``actions/shift_range.py`` re-centres such ranges). Exporters
write these activations in many forms (``HardSwish``; ``x * HardSigmoid(x)``; paddle2onnx's and
torch's decomposed ``x * Clip(x + 3, 0, 6) / 6`` with the 3 quantized by ONNX Runtime; the
saturation clamps a rewrite keeps). Rather than recognise each form, ``scalar_chain`` finds the
one tensor the activation is a function of, and ``least_value`` evaluates that function with
ONNX's reference evaluator over a dense grid of inputs: the bound holds for whatever form the
producer wrote.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .graph import Node, QGraph, Tensor, constant_value
from .ops import SCALAR_POINTWISE_OPS

# Longest chain followed back from an activation: a decomposed hard-swish with the clamps and
# constant DQs a quantizer and the rules add is about ten nodes.
MAX_CHAIN_NODES = 16

# Where activations bend (hard-swish at -3 and 3, SiLU's minimum at -1.28): a fine grid over
# [-64, 64], step 1/32, and a geometric tail out to the float type's range.
_GRID_HALF_WIDTH = 64.0
_GRID_POINTS = 2**12 + 1
_TAIL_POINTS = 48


def scalar_chain(graph: QGraph, t: Tensor) -> tuple[Tensor, list[Node]] | None:
    """(root, nodes) when ``t`` is computed from the one non-constant tensor ``root`` by
    ``ops.SCALAR_POINTWISE_OPS`` whose other inputs are scalar constants; ``nodes`` in an order
    that computes them (inputs first). Where the whole chain leads to more than one tensor (a
    Relu after a residual Add), the last op alone, when it reads one tensor. None otherwise."""
    found = _chain(graph, t)
    if found is not None:
        return found
    p = graph.producer(t)
    if p is None or p.op not in SCALAR_POINTWISE_OPS or len(p.outputs) != 1:
        return None
    named = [i for i in p.inputs if i.name]
    variables = [i for i in named if constant_value(i) is None]
    if len(variables) != 1 or not all(
        _is_scalar_constant(i) for i in named if i is not variables[0]
    ):
        return None
    return variables[0], [p]


def _is_scalar_constant(t: Tensor) -> bool:
    v = constant_value(t)
    return v is not None and np.asarray(v).size == 1


def _chain(graph: QGraph, t: Tensor) -> tuple[Tensor, list[Node]] | None:
    order: list[Node] = []
    done: set[int] = set()
    roots: dict[int, Tensor] = {}

    def visit(x: Tensor) -> bool:
        if not x.name:  # an omitted optional input
            return True
        value = constant_value(x)
        if value is not None:
            return np.asarray(value).size == 1
        p = graph.producer(x)
        if p is None or p.op not in SCALAR_POINTWISE_OPS or graph.is_graph_output(x) and x is not t:
            roots[id(x)] = x
            return len(roots) == 1
        if id(p) in done:
            return True
        if len(order) >= MAX_CHAIN_NODES or len(p.outputs) != 1:
            return False
        done.add(id(p))
        if not all(visit(i) for i in p.inputs):
            return False
        order.append(p)
        return True

    if not visit(t) or len(roots) != 1 or not order:
        return None
    (root,) = roots.values()
    return root, order


# least_value's answers by chain signature: a rule's later visits ask again about the same chains
_LEAST: dict[tuple, float | None] = {}
_LEAST_MAX = 4096


def least_value(graph: QGraph, root: Tensor, nodes: list[Node], out: Tensor) -> float | None:
    """The least value ``out`` takes over every finite ``root`` of the graph's float type
    (a dense grid; its spacing bounds the error far below an int8 step of these activations),
    or None when the chain is unbounded below, or cannot be evaluated."""
    key = _signature(graph, root, nodes, out)
    if key not in _LEAST:
        if len(_LEAST) >= _LEAST_MAX:
            _LEAST.clear()
        _LEAST[key] = _evaluate_least(graph, root, nodes, out)
    return _LEAST[key]


def _signature(graph: QGraph, root: Tensor, nodes: list[Node], out: Tensor) -> tuple:
    """What the chain computes, independent of names: ops, attributes, wiring, constants."""
    index = {id(root): -1}
    for k, n in enumerate(nodes):
        index.update((id(o), k) for o in n.outputs)
    parts = []
    for n in nodes:
        ins: list[object] = []
        for i in n.inputs:
            if not i.name:
                ins.append(None)
            elif id(i) in index:
                ins.append(index[id(i)])
            else:
                v = np.asarray(constant_value(i))
                ins.append((v.dtype.str, v.shape, v.tobytes()))
        attrs = tuple(sorted((k, repr(v)) for k, v in n.attrs.items()))
        parts.append((n.op, n.domain or "", attrs, tuple(ins)))
    return (np.dtype(graph.float_type).str, graph.opset, tuple(parts), index.get(id(out)))


def _evaluate_least(graph: QGraph, root: Tensor, nodes: list[Node], out: Tensor) -> float | None:
    dtype = np.dtype(graph.float_type)
    top = float(np.finfo(dtype).max) / 16
    tail = np.geomspace(_GRID_HALF_WIDTH, top, _TAIL_POINTS)
    grid = np.concatenate(
        [-tail[::-1], np.linspace(-_GRID_HALF_WIDTH, _GRID_HALF_WIDTH, _GRID_POINTS), tail]
    ).astype(dtype)
    try:  # an op or attribute the evaluator cannot take: no bound, nothing is shifted
        model = _chain_model(graph, root, nodes, out, dtype, grid.size)
        with np.errstate(all="ignore"):  # the tail overflows (inf): still a bound
            (values,) = ReferenceEvaluator(model).run([out.name], {root.name: grid})
    except Exception:
        return None
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size != grid.size or np.isnan(values).any():
        return None
    central = values[_TAIL_POINTS:-_TAIL_POINTS]
    least = float(central.min())
    # still falling in the tails (LeakyRelu, a linear map): no bound an int8 grid could use
    if not np.isfinite(least) or values.min() < least:
        return None
    return least


def _chain_model(
    graph: QGraph, root: Tensor, nodes: list[Node], out: Tensor, dtype: np.dtype, size: int
) -> onnx.ModelProto:
    """The chain alone as a model: ``root`` a 1-D input of ``size`` values, constants inlined."""
    inits: dict[str, onnx.TensorProto] = {}
    for n in nodes:
        for i in n.inputs:
            value = constant_value(i) if i.name and i.name not in inits else None
            if value is not None:
                inits[i.name] = numpy_helper.from_array(np.asarray(value), i.name)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    return helper.make_model(
        helper.make_graph(
            [
                helper.make_node(
                    n.op,
                    [i.name for i in n.inputs],
                    [o.name for o in n.outputs],
                    domain=n.domain or "",
                    **n.attrs,
                )
                for n in nodes
            ],
            "chain",
            [helper.make_tensor_value_info(root.name, elem, [size])],
            [helper.make_tensor_value_info(out.name, elem, None)],
            list(inits.values()),
        ),
        # The reference evaluator implements Q/DQ from opset 19 on; nothing here changed since 13.
        opset_imports=[helper.make_opsetid("", max(graph.opset, 21))],
    )
