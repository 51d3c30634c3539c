"""Rule 3: Conv-BN-activation. TensorRT folds BatchNormalization into the conv and fuses the
activation (ReLU, LeakyReLU, Clip, Sigmoid, SiLU = Sigmoid+Mul, HardSwish, HardSigmoid) as the
conv's epilogue; a Q/DQ between them breaks the fusion and leaves a separate float PointWise
layer plus Reformats.

- ``remove_epilogue_qdq``: remove Q/DQ pairs between a weighted op and its BN/activation and
  inside the activation (between Sigmoid and Mul of a SiLU), rewiring only those consumers. The
  pair at the activation's output stays (other rules decide about it).
- ``fold_bn``: fold a BatchNormalization that follows a Conv into the conv. With symmetric
  per-channel weights this is exact in the integers: channel c of the folded weight is
  ``sign(g_c) * Wq_c`` with scale ``s_c * |g_c|`` where ``g = gamma / sqrt(var + eps)``, so the
  int8 values TensorRT sees are the original ones (up to sign) and only the scales move.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..batchnorm import bn_affine
from ..graph import Node, QGraph, constant_value
from ..ops import CONV_OPS
from ..qdq_numpy import dequantize_np, quantize_np
from ..report import Change
from ..trt_patterns import epilogue_pairs, is_const, is_ignored, is_weighted
from .registry import ActionContext, register_action


@register_action("remove_epilogue_qdq", params={})
def remove_epilogue_qdq(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Remove Q/DQ between a weighted op (the anchor) and its BN/activation, and inside SiLU
    (found by ``trt_patterns.epilogue_pairs``, which lint shares)."""
    w = node
    if not is_weighted(graph, w) or is_ignored(w, ctx.ignore):
        return []
    found = epilogue_pairs(graph, w)
    changes = [Change("remove", [f.q.name, f.dq.name], f.why) for f in found]
    if not ctx.dry_run:
        for f in found:
            graph.bypass_qdq(f.q, f.dq, consumers=f.consumers)
    return changes


def _bn_params(bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel multiplier g and offset h with BN(y) = g * y + h."""
    if len(bn.outputs) != 1:
        return None
    return bn_affine(bn, np.float32)


def _out_axis(conv: Node) -> int:
    return 1 if conv.op == "ConvTranspose" else 0


@register_action("fold_bn", params={}, skip_ignored=False)
def fold_bn(graph: QGraph, node: Node | None, params: dict, ctx: ActionContext) -> list[Change]:
    """Fold a BatchNormalization (the anchor) into the Conv/ConvTranspose it follows (exact,
    int8 preserved). The ignore list applies to the conv, so ignored BN anchors are visited."""
    bn = node
    if bn is None or bn.op != "BatchNormalization":
        return []
    conv = graph.producer(bn.inputs[0])
    factor = None
    if conv is not None and conv.op in _CHANNEL_SCALE_OPS:  # torch's QAT ConvBn: Conv / f -> BN
        scaling = conv
        conv = next((graph.producer(t) for t in scaling.inputs if not is_const(t)), None)
        factor = _channel_factor(graph, scaling, bn, conv)
        if factor is None:
            return []
    if conv is None or conv.op not in CONV_OPS or is_ignored(conv, ctx.ignore):
        return []
    y = conv.outputs[0]
    if len(y.outputs) != 1 or graph.is_graph_output(y):
        return []
    if conv.op == "ConvTranspose" and int(conv.attrs.get("group", 1)) != 1:
        return []
    gh = _bn_params(bn)
    if gh is None:
        return []
    g, h = gh
    if factor is not None:
        if factor.size not in (1, g.size):
            return []
        g = (g * factor).astype(np.float32)  # BN(f * y) = (g f) y + h
    plan = _fold_plan(graph, conv, g, h)
    if isinstance(plan, str):
        ctx.note(f"BatchNormalization '{bn.name}' not folded: {plan}")
        return []
    neg = int(np.sum(g < 0))
    change = Change(
        "fold",
        [bn.name, *([scaling.name] if factor is not None else []), conv.name],
        f"BN folded into '{conv.name}': {plan['form']} weight, scales x|gamma/sigma|"
        + (f", {neg} channel(s) negated" if neg else "")
        + (f", with the per-channel {scaling.op} before it" if factor is not None else ""),
    )
    if ctx.dry_run:
        return [change]
    plan["apply"]()
    if factor is not None:
        graph.absorb(conv, scaling)
    graph.absorb(conv, bn)  # the conv now computes the BN's output, under its name
    return [change]


# a per-channel constant factor between a conv and its BN (PyTorch's QAT ConvBn2d quantizes
# W * gamma/sigma and divides the conv's output by gamma/sigma before the BN)
_CHANNEL_SCALE_OPS = ("Mul", "Div")


def _channel_factor(graph: QGraph, op: Node, bn: Node, conv: Node | None) -> np.ndarray | None:
    """The factor ``f`` with ``op(y) = f * y`` per channel (axis 1), when ``op`` is a Mul or Div of
    the conv output by a finite non-zero constant, read by ``bn`` alone; else None."""
    if conv is None or conv.op not in CONV_OPS:
        return None
    if len(op.inputs) != 2 or len(op.outputs) != 1 or list(op.outputs[0].outputs) != [bn]:
        return None
    if graph.is_graph_output(op.outputs[0]):
        return None
    k = 1 if op.op == "Div" else next((i for i in (1, 0) if is_const(op.inputs[i])), None)
    if k is None or not is_const(op.inputs[k]):
        return None
    c = constant_value(op.inputs[k])
    y = op.inputs[1 - k]
    rank = len(y.shape) if y.shape is not None else _conv_rank(graph, conv)
    if c is None or rank is None or rank < 2 or c.ndim > rank:
        return None
    full = np.asarray(c, np.float64).reshape((1,) * (rank - c.ndim) + c.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != 1):
        return None  # not constant within each channel
    f = full.reshape(-1)
    if not np.all(np.isfinite(f)) or np.any(f == 0):
        return None
    return (1.0 / f if op.op == "Div" else f).astype(np.float32)


def _fold_plan(graph: QGraph, conv: Node, g: np.ndarray, h: np.ndarray) -> dict | str:
    """How to fold ``g``/``h`` into ``conv``: a dict with ``form`` and ``apply``, or a reason."""
    axis = _out_axis(conv)
    w_t = conv.inputs[1]
    cout = g.size
    bias = (
        constant_value(conv.inputs[2])
        if len(conv.inputs) > 2 and conv.inputs[2].name
        else np.zeros(cout, np.float32)
    )
    if bias is None:
        return "bias is not a float constant"
    new_bias = (np.asarray(bias, np.float32) * g + h).astype(np.float32)

    def set_bias() -> None:
        c = graph.float_constant(f"{conv.name}_bias", new_bias)
        if len(conv.inputs) > 2:
            graph.set_input(conv, 2, c)
        else:
            conv.inputs.append(c)
            graph.touch()

    w = constant_value(w_t)
    if w is not None:  # float weight
        shape = [1] * w.ndim
        shape[axis] = cout
        new_w = (np.asarray(w, np.float32) * g.reshape(shape)).astype(np.float32)

        def apply_float() -> None:
            graph.set_input(conv, 1, graph.float_constant(f"{w_t.name}_bn", new_w))
            set_bias()

        return {"form": "float", "apply": apply_float}

    dq = graph.producer(w_t)
    if not graph.is_dq(dq) or len(w_t.outputs) != 1:
        return "weight is neither a constant nor a DQ used by this conv only"
    src = dq.inputs[0]
    q = graph.producer(src)
    pair_form = graph.is_q(q) and is_const(q.inputs[0])
    if not pair_form and not is_const(src):
        return "weight DQ does not read a constant"
    p = graph.qparams(q if pair_form else dq)
    if p.per_axis and p.axis != axis:
        return f"weight scales are per-channel on axis {p.axis}, not the output axis {axis}"
    if p.zero_point is not None and np.any(p.zero_point != 0):
        return "weight zero point is not 0"
    scale = np.broadcast_to(p.scale.reshape(-1), (cout,)).astype(np.float32)
    w_raw = constant_value(q.inputs[0] if pair_form else src)
    wq = quantize_np(w_raw, p.scale, None, p.axis) if pair_form else np.asarray(w_raw)
    if wq.dtype != np.int8:
        return f"weight is {wq.dtype}, not int8"
    shape = [1] * wq.ndim
    shape[axis] = cout
    sign = np.where(g < 0, -1, 1).astype(np.int8).reshape(shape)
    if np.any((wq == -128) & (sign < 0)):
        return "an int8 weight of -128 would be negated (not representable)"
    new_wq = (wq * sign).astype(np.int8)
    # rounded to the graph's float type first, so the pair form below dequantizes exactly
    new_scale = graph.to_float_type(scale * np.abs(g)).astype(np.float32)
    if np.any(new_scale <= 0) or not np.all(np.isfinite(new_scale)):
        return "gamma/sigma is zero or not finite for some channel"

    def apply_q() -> None:
        graph.set_weight_qparams([q, dq] if pair_form else [dq], new_scale, axis, w_t.name)
        if pair_form:
            w_float = dequantize_np(new_wq, new_scale, None, axis)
            q.inputs[0] = graph.float_constant(f"{w_t.name}_bn", w_float)
        else:
            dq.inputs[0] = gs.Constant(graph.unique_name(f"{w_t.name}_bn"), new_wq)
        graph.touch()
        set_bias()

    return {"form": "Q/DQ pair" if pair_form else "int8 DQ", "apply": apply_q}


def _conv_rank(graph: QGraph, conv: Node) -> int | None:
    """The rank of a conv's output where shapes are unknown: its weight's (that of the constant
    behind the weight DQ, or behind its Q), or its kernel's spatial rank + 2."""
    kernel = conv.attrs.get("kernel_shape")
    if kernel is not None:
        return len(kernel) + 2
    w = conv.inputs[1] if len(conv.inputs) > 1 else None
    for _ in range(3):  # the weight, the DQ's input, the Q's input
        if w is None or w.shape is not None:
            break
        p = graph.producer(w)
        w = p.inputs[0] if p is not None and (graph.is_dq(p) or graph.is_q(p)) else None
    return len(w.shape) if w is not None and w.shape is not None else None
