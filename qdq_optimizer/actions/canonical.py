"""Canonical form for exporter artefacts that hide constants (cleanup set; each rewrite is exact).

torch.onnx puts an Identity over shared or duplicated parameters (BN statistics, biases,
weights) and emits Constant nodes; MatMul weights arrive behind a Transpose; Paddle reshapes its
constants at run time; ONNX Runtime's quantizer puts BatchNormalization parameters behind DQ and
shares one int32 bias DQ between convs through Identity. Rules that look for "a constant" or "a
weight DQ" (fold-bn, float-bias, weight detection) then miss them. These actions put the constant
back where those rules look, computing exactly what the graph computed:

- ``remove_identity``: readers of an Identity read its input.
- ``constant_to_initializer``: a Constant node read as a weight, bias, DQ'd weight,
  BatchNormalization parameter, Concat operand or layout-op data becomes an initializer with the
  same value (others, such as a Q/DQ scale or a Reshape's target shape, stay: every rule reads
  them through ``constant_value`` anyway).
- ``fold_constant_layout``: Transpose / Reshape / Squeeze / Unsqueeze / Flatten of a constant
  becomes the rearranged constant; of a weight DQ (int8 initializer, or Q of a float one) the
  integer (or float) values are rearranged and a per-channel axis is remapped (a Transpose moves
  it; a Reshape/Squeeze/Unsqueeze keeps a per-tensor DQ only). Rearranging elements commutes with
  element-wise quantization, so the values are bit-identical.
- ``fold_dq_constant``: a DQ (or Q -> DQ) of a constant that only BatchNormalization parameters
  read becomes the float values it computes (numpy computes them as ONNX Runtime does).

onnx-graphsurgeon's ``fold_constants`` would also fold every weight DQ into float weights (which
TensorRT must read quantized), so these few exact folds are written out instead.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import DEQUANTIZE, Node, QGraph, constant_value
from ..qdq_numpy import dequantize_np
from ..report import Change
from .registry import ActionContext, register_action

LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _int_quantize(x: np.ndarray, scale, zp, axis, dtype: np.dtype) -> np.ndarray:
    """ONNX QuantizeLinear to an integer ``dtype``: saturate(round_half_even(x / s) + z)."""
    x = np.asarray(x, np.float32)
    s = np.asarray(scale, np.float32)
    z = np.zeros((), np.float64) if zp is None else np.asarray(zp, np.float64)
    if s.size > 1:
        shape = [1] * x.ndim
        shape[axis] = s.size
        s, z = s.reshape(shape), (z.reshape(shape) if z.size > 1 else z)
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / s).astype(np.float64) + z, info.min, info.max).astype(dtype)


@register_action("remove_identity", params={}, local=True)
def remove_identity(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Make the readers of an Identity (the anchor) read its input."""
    if node is None or node.op != "Identity" or len(node.inputs) != 1:
        return []
    src, out = node.inputs[0], node.outputs[0]
    if graph.is_graph_output(out):
        return []  # the graph output's name must stay
    if graph.is_graph_output(src) and not out.outputs:
        return []
    what = "an initializer" if isinstance(src, gs.Constant) else f"'{src.name}'"
    change = Change("remove", [node.name], f"readers of '{out.name}' read {what} directly")
    if ctx.dry_run:
        return [change]
    graph.replace_uses(out, src)
    graph.remove_node(node)
    return [change]


@register_action("constant_to_initializer", params={}, local=True)
def constant_to_initializer(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Replace a Constant node (the anchor) by an initializer holding its value."""
    if node is None or node.op != "Constant" or len(node.outputs) != 1:
        return []
    out = node.outputs[0]
    if graph.is_graph_output(out) or node.attrs.get("sparse_value") is not None:
        return []
    if not any(_reads_as_parameter(c, out) for c in out.outputs):
        return []  # a Constant the rules never look behind (a Reshape shape, a Mul factor) stays
    value = constant_value(out)
    if value is None:
        return []
    change = Change("fold", [node.name], f"Constant '{out.name}' -> initializer")
    if ctx.dry_run:
        return [change]
    const = gs.Constant(graph.unique_name(out.name), np.array(value))
    graph.replace_uses(out, const)
    graph.remove_node(node)
    return [change]


_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops whose data inputs the commute walk (is_int8_tensor, scale groups) follows: a Constant
# node there reads as a data producer, an initializer as a constant.
_JOINING = frozenset({"Concat", "Add", "Mul", "MaxPool", "Pad", "Resize"})


def _reads_as_parameter(consumer: Node, t: gs.Tensor) -> bool:
    """Does ``consumer`` read ``t`` where a rule looks for an initializer: a weight or bias, a
    DQ's quantized weight, a BatchNormalization parameter, an operand of a joining op, or the
    data of a layout op that folds it? (Q/DQ scales and zero points are read either way.)"""
    positions = [i for i, x in enumerate(consumer.inputs) if x is t]
    if consumer.op in _WEIGHTED:
        return any(i >= 1 for i in positions)
    if consumer.op in ("QuantizeLinear", "DequantizeLinear"):
        return 0 in positions
    if consumer.op == "BatchNormalization":
        return any(i >= 1 for i in positions)
    if consumer.op in _JOINING:
        return consumer.op == "Concat" or 0 in positions
    return consumer.op in LAYOUT_OPS and 0 in positions


def _layout_numpy(op: Node, value: np.ndarray) -> np.ndarray | None:
    """The op applied to a constant in numpy, or None when its parameters are not constant."""
    if op.op == "Transpose":
        perm = op.attrs.get("perm")
        return np.transpose(value, perm if perm is None else list(perm))
    if op.op == "Flatten":
        axis = int(op.attrs.get("axis", 1))
        axis = axis + value.ndim if axis < 0 else axis
        lead = int(np.prod(value.shape[:axis], dtype=np.int64))
        return value.reshape(lead, -1)
    if op.op == "Reshape":
        if len(op.inputs) < 2 or op.attrs.get("allowzero", 0):
            return None
        shape = constant_value(op.inputs[1])
        if shape is None:
            return None
        shape = [value.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
        return value.reshape(shape)
    axes = op.attrs.get("axes")
    if axes is None and len(op.inputs) > 1 and op.inputs[1].name:
        axes = constant_value(op.inputs[1])
        if axes is None:
            return None
    if op.op == "Squeeze":
        return np.squeeze(value, axis=None if axes is None else tuple(int(a) for a in axes))
    if op.op == "Unsqueeze" and axes is not None:
        out = value
        rank = value.ndim + len(axes)
        for a in sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes):
            out = np.expand_dims(out, a)
        return out
    return None


def _weight_source(graph: QGraph, t: gs.Tensor) -> tuple[Node | None, Node] | None:
    """(Q or None, DQ) when ``t`` is a weight DQ's output used only here: DQ over a constant, or
    DQ over Q of a constant."""
    dq = graph.producer(t)
    if not graph.is_dq(dq) or len(t.outputs) != 1 or graph.is_graph_output(t):
        return None
    src = dq.inputs[0]
    if constant_value(src) is not None:
        return None, dq
    q = graph.producer(src)
    if graph.is_q(q) and constant_value(q.inputs[0]) is not None and len(src.outputs) == 1:
        return q, dq
    return None


@register_action("fold_constant_layout", params={}, local=True)
def fold_constant_layout(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Fold a Transpose/Reshape/Squeeze/Unsqueeze/Flatten (the anchor) of a constant, or of a
    weight DQ (axis remapped), into the constant it computes."""
    if node is None or node.op not in LAYOUT_OPS or not node.inputs or len(node.outputs) != 1:
        return []
    out = node.outputs[0]
    if graph.is_graph_output(out):
        return []
    src = node.inputs[0]
    value = constant_value(src)
    if value is not None:
        folded = _layout_numpy(node, np.asarray(value))
        if folded is None:
            return []
        change = Change("fold", [node.name], f"{node.op} of constant '{src.name}' folded")
        if ctx.dry_run:
            return [change]
        graph.replace_uses(out, gs.Constant(graph.unique_name(out.name), folded))
        graph.drop_if_unused(node)
        return [change]
    weight = _weight_source(graph, src)
    if weight is None:
        return []
    q, dq = weight
    p = graph.qparams(q if q is not None else dq)
    if p.per_axis and node.op != "Transpose":
        return []  # a reshape could split the channel axis: leave it
    raw = constant_value(q.inputs[0] if q is not None else dq.inputs[0])
    folded = _layout_numpy(node, np.asarray(raw))
    if folded is None:
        return []
    axis = None
    if p.per_axis:
        perm = node.attrs.get("perm")
        perm = list(range(raw.ndim))[::-1] if perm is None else [int(i) for i in perm]
        axis = perm.index(p.axis)
    change = Change(
        "fold",
        [node.name, *(n.name for n in (q, dq) if n is not None)],
        f"{node.op} folded into weight '{(q or dq).inputs[0].name}'"
        + (f" (per-channel axis {p.axis} -> {axis})" if axis is not None else ""),
    )
    if ctx.dry_run:
        return [change]
    holder = q if q is not None else dq
    graph.set_input(holder, 0, gs.Constant(graph.unique_name(holder.inputs[0].name), folded))
    for n in (q, dq):
        if n is not None and axis is not None:
            n.attrs["axis"] = axis
    shape = list(folded.shape)
    for n in (q, dq):
        if n is not None:
            n.outputs[0].shape = shape
    graph.touch()
    graph.replace_uses(out, dq.outputs[0])
    graph.drop_if_unused(node)
    return [change]


@register_action("fold_dq_constant", params={"readers": ["BatchNormalization"]}, local=True)
def fold_dq_constant(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Replace a DQ (the anchor) of a constant that only parameter inputs of ``readers`` ops
    read (ORT quantizes BatchNormalization parameters) by the float values it computes."""
    dq = node
    if dq is None or dq.op != DEQUANTIZE:
        return []
    out = dq.outputs[0]
    readers = set(params.get("readers") or ())
    if not out.outputs or graph.is_graph_output(out):
        return []
    for c in out.outputs:
        if c.op not in readers or any(t is out for t in c.inputs[:1]):
            return []  # a data input (index 0) is no parameter
    src = dq.inputs[0]
    q = graph.producer(src)
    pair = graph.is_q(q) and constant_value(q.inputs[0]) is not None
    raw = constant_value(q.inputs[0] if pair else src)
    if raw is None or dq.attrs.get("block_size") or (pair and len(src.outputs) != 1):
        return []
    try:
        p = graph.qparams(dq)
    except ValueError:
        return []
    if pair:
        try:
            int_dtype = onnx.helper.tensor_dtype_to_np_dtype(graph.qparams(q).dtype)
        except ValueError:
            return []
        if int_dtype.kind not in "iu" or int_dtype.itemsize > 2:
            return []
    elif np.asarray(raw).dtype.kind not in "iu":
        return []
    change = Change(
        "fold",
        [n.name for n in ((q, dq) if pair else (dq,))],
        f"dequantized constant read by {', '.join(sorted({c.name for c in out.outputs}))} "
        "-> float initializer",
    )
    if ctx.dry_run:
        return [change]
    ints = (
        _int_quantize(raw, graph.qparams(q).scale, graph.qparams(q).zero_point, p.axis, int_dtype)
        if pair
        else np.asarray(raw)
    )
    values = dequantize_np(ints, p.scale, p.zero_point, p.axis)
    graph.replace_uses(out, graph.float_constant(f"{out.name}_folded", values))
    graph.drop_if_unused(dq)
    if pair:
        graph.drop_if_unused(q)
    return [change]
