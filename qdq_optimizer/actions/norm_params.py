"""Rule ``float-params``: constants that reach a non-GEMM op through a DequantizeLinear become the
float values the DQ computes.

ONNX Runtime's QDQ format quantizes every input of the ops it knows: a LayerNormalization's scale
(int8, as a weight) and bias (int32, scale = input scale x weight scale), and int32 biases of
other ops. TensorRT's Q/DQ are int8/fp8/int4/fp4 (no int32), and it runs normalization layers in
FP16/FP32 (``docs/transformers.md`` 1.3), so these DQs are only a conversion of a constant. The
float initializer holds exactly what the DQ computes in ONNX Runtime, so the rewrite is
bit-exact. Conv/ConvTranspose/Gemm biases are ``float-bias``'s (``weighted.py``); weights of
weighted ops keep their DQ.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Node, QGraph, Tensor, constant_value

# Ops whose inputs after the first are parameters TensorRT applies in float.
from ..ops import NORM_OPS
from ..qdq_numpy import dequantize_np
from ..report import Change
from .registry import ActionContext, register_action

_BIAS_OWNERS = frozenset({"Conv", "ConvTranspose", "Gemm"})  # input 2: float-bias's


def _float_reader(node: Node, t: Tensor, int32: bool) -> bool:
    """Does ``node`` read ``t`` as a parameter that should be float?"""
    idx = [i for i, x in enumerate(node.inputs) if x is t]
    if node.op in _BIAS_OWNERS and idx == [2]:
        return False  # float-bias converts it
    if node.op in NORM_OPS:
        return 0 not in idx
    return int32


@register_action("float_params", params={}, skip_ignored=False)
def float_params(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Replace a DQ of a constant (the anchor) by its float values for the normalization ops
    that read it as scale/bias, or for every reader when it is int32 (ONNX Runtime's bias form).
    Applies to ignored ops too: they run in float anyway."""
    dq = node
    if not graph.is_dq(dq) or graph.is_graph_output(dq.outputs[0]):
        return []
    raw = constant_value(dq.inputs[0])
    if raw is None:
        return []
    int32 = raw.dtype == np.int32
    out = dq.outputs[0]
    readers = [c for c in out.outputs if _float_reader(c, out, int32)]
    if not readers:
        return []
    try:
        p = graph.qparams(dq)
    except ValueError:
        return []
    kind = "int32" if int32 else str(raw.dtype)
    names = ", ".join(r.name for r in readers)
    change = Change(
        "fold", [dq.name, *(r.name for r in readers)], f"{kind} DQ -> float for {names}"
    )
    if ctx.dry_run:
        return [change]
    values = dequantize_np(raw, p.scale, p.zero_point, p.axis)
    scale_type = constant_value(dq.inputs[1]).dtype
    if scale_type != values.dtype:  # an fp16 graph: the DQ's output type is its scale's
        values = values.astype(scale_type)
    const = gs.Constant(graph.unique_name(f"{out.name}_float"), values)
    graph.replace_uses(out, const, only=readers)
    graph.drop_if_unused(dq)
    return [change]
