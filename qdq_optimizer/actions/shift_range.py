"""Re-centre a one-sided INT8 activation: ``shift_one_sided`` (rule ``shift-relu-range``).

A tensor a Relu or a Clip(0, m) makes lies in [0, a]; the signed symmetric int8 TensorRT runs
spends half its codes on negatives it never holds (step a/127 where uint8 had a/255: the cost
``symmetric-int8`` warns about, and pytorch-quantization's and ModelOpt's own graphs pay it too).
When the activation is its conv's only reader and every reader of its Q/DQ is the data input of
an unpadded Conv, ``x' = x - c`` with ``c = a/2`` carries the same values on all the codes:

    before: Conv(b) -> Relu -> Q/DQ(s) -> Conv(W, b2, no padding)
    after:  Conv(b - c) -> Clip(-c, m - c) -> Q/DQ(s/2) -> Conv(W, b2 + c * sum(W))

- the producer conv's bias moves by ``-c`` and its activation becomes ``Clip(-c, m - c)``, which
  TensorRT fuses into the conv as it fused the Relu (Clip is one of its fused activations);
- each consumer conv adds back what the shift took away: without padding every output reads
  only shifted inputs, so its bias gains ``c * sum(W)`` over each output channel's weights (the
  weights TensorRT will use: dequantized int8); exact up to float rounding;
- with ``c = 127 s/2`` the new grid ``c + k s/2`` holds every point ``j s`` of the old one, so no
  value is rounded worse, and most are rounded twice as finely.

A padded consumer would pad with ``-c`` instead of 0 at the border: left alone, as are tensors
with other readers (a residual skip, a graph output) and ConvTranspose consumers (their border
outputs sum fewer inputs).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..biases import float_bias, set_float_bias
from ..graph import Node, QGraph, Tensor, constant_value
from ..protos import is_float_dtype
from ..qdq_numpy import dequantize_np, quantize_np
from ..report import Change
from ..trt_patterns import conv_data_readers, is_ignored, per_tensor_int8
from .clamps import clip_bounds
from .registry import ActionContext, register_action


def _zero_padding(conv: Node) -> bool:
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto in ("NOTSET", "VALID") and not any(conv.attrs.get("pads", []))


def _clip_bounds(act: Node) -> tuple[float, float | None] | None:
    """(0, max or None) of a Relu or a Clip whose min is 0; None for anything else."""
    if act.op == "Relu":
        return 0.0, None
    if act.op != "Clip" or act.attrs:  # opset-6 Clip (attributes) is upgraded before the rules
        return None
    bounds = clip_bounds(act)
    if bounds is None or bounds[0] != 0.0 or not bounds[1] > 0:
        return None
    return 0.0, None if np.isinf(bounds[1]) else bounds[1]


def _weight(graph: QGraph, conv: Node) -> np.ndarray | None:
    """The conv's weight as TensorRT computes with it: the dequantized int8 values, or a float
    constant."""
    w_t = conv.inputs[1]
    raw = constant_value(w_t)
    if raw is not None:
        return np.asarray(raw, np.float64) if is_float_dtype(np.asarray(raw).dtype) else None
    dq = graph.producer(w_t)
    if not graph.is_dq(dq):
        return None
    p = graph.qparams(dq)
    src = constant_value(dq.inputs[0])
    if src is None:  # pair form: DQ(Q(float W))
        q = graph.producer(dq.inputs[0])
        w = constant_value(q.inputs[0]) if graph.is_q(q) else None
        if w is None:
            return None
        qp = graph.qparams(q)
        src = quantize_np(w, qp.scale, qp.zero_point, qp.axis)
    return np.asarray(dequantize_np(src, p.scale, p.zero_point, p.axis), np.float64)


@register_action("shift_one_sided", params={})
def shift_one_sided(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Shift the [0, a] tensor the anchor Q reads by a/2 onto all the int8 codes (module doc)."""
    q = node
    if q is None or not graph.is_q(q):
        return []
    x: Tensor = q.inputs[0]
    act = graph.producer(x)
    if act is None or list(x.outputs) != [q] or graph.is_graph_output(x):
        return []
    bounds = _clip_bounds(act)
    conv = graph.producer(act.inputs[0]) if bounds is not None else None
    if conv is None or conv.op != "Conv" or list(act.inputs[0].outputs) != [act]:
        return []
    if graph.is_graph_output(act.inputs[0]) or ctx.any_ignored([conv, act]):
        return []
    p = per_tensor_int8(graph, q)
    if p is None or q.attrs.get("saturate") == 0:
        return []
    dqs = list(q.outputs[0].outputs)
    if not dqs or not all(graph.is_dq(d) and graph.qparams(d).same_as(p) for d in dqs):
        return []
    consumers = conv_data_readers(
        graph, dqs, lambda c: _zero_padding(c) and not is_ignored(c, ctx.ignore)
    )
    if consumers is None:
        return []
    weights = [_weight(graph, c) for c in consumers]
    w_prod = _weight(graph, conv)
    if w_prod is None or any(w is None for w in weights):
        return []
    b_prod = float_bias(graph, conv, w_prod.shape[0])
    biases = [float_bias(graph, c, w.shape[0]) for c, w in zip(consumers, weights, strict=True)]
    if b_prod is None or any(b is None for b in biases):
        return []
    step = float(graph.to_float_type(np.float32(p.scale.reshape(-1)[0] / 2)))
    c = 127.0 * step
    lo, hi = bounds
    change = Change(
        "shift",
        [conv.name, act.name, q.name, *(d.name for d in dqs), *(k.name for k in consumers)],
        f"[0, {127 * 2 * step:.4g}] from '{act.name}' shifted by -{c:.4g} onto all int8 codes "
        f"(step {2 * step:.4g} -> {step:.4g}); {len(consumers)} unpadded conv(s) add it back "
        "in their bias (not exact: the grid is finer)",
    )
    if ctx.dry_run:
        return [change]
    set_float_bias(graph, conv, b_prod - c)
    for k, w, b in zip(consumers, weights, biases, strict=True):
        set_float_bias(graph, k, b + c * w.reshape(w.shape[0], -1).sum(axis=1))
    ins = [act.inputs[0], graph.float_constant(f"{act.name}_min", np.float32(lo - c))]
    if hi is not None:
        ins.append(graph.float_constant(f"{act.name}_max", np.float32(hi - c)))
    # a new tensor: a name keeps the values it had in the input (calibration ranges read it)
    shifted = gs.Variable(graph.unique_name(f"{x.name}_shifted"), dtype=x.dtype, shape=x.shape)
    graph.remove_node(act)
    graph.add_node("Clip", ins, [shifted], graph.unique_name(f"{act.name}_shifted"))
    graph.set_input(q, 0, shifted)
    for n in (q, *dqs):
        graph.set_qparams(n, np.float32(step))
    return [change]
