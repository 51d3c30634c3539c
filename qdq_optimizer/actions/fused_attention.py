"""Rules of the opt-in ``attention`` rule set: shape an INT8 attention core the way TensorRT's
fused multi-head attention wants it (facts and sources in ``docs/transformers.md`` 1.2, 3.2).

- ``softmax-output-qdq`` (``insert_softmax_output_qdq``): BMM1 and V are INT8 but the Softmax
  output reaches BMM2 in float; TensorRT generates INT8 fused MHA "only if quantized and dequantized
  layers are placed before the first batched matrix multiplication, after softmax, and after the
  second". The probabilities lie in [0, 1], so the Q/DQ needs no data: symmetric int8 with scale
  1/127 (``ops.SOFTMAX_INT8_SCALE``). Adds quantization: the output moves (measured in the docs).
- ``attention-scale-before-bmm1`` (``move_attention_scale``): a constant Mul/Div right after an
  INT8 BMM1 moves in front of the quantizer of one BMM1 input (Q first), whose Q/DQ scale is
  multiplied by the same factor, so the int8 values stay the same: "TensorRT requires Q or K to be
  multiplied with attention scale ... before going into ... the first Batched Matrix Multiply".
  Bit-exact under ONNX Runtime when the factor is a power of two (head sizes 16, 64, 256:
  1/sqrt(d)); otherwise exact in real arithmetic and off by float rounding (docs give the numbers).
  Clips between BMM1 and the scale (the saturation of an ORT output pair the rules removed) get
  their bounds times the factor.

Both are pure rewrites of what ``matmul_patterns`` finds (``softmax_qdq_reader``,
``attention_scale_move``), the same predicates lint's ``trt-attention`` warnings use.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Node, QGraph, constant_value
from ..matmul_patterns import (
    AttentionBlock,
    attention_blocks,
    attention_scale_move,
    softmax_qdq_reader,
)
from ..ops import SOFTMAX_INT8_SCALE
from ..report import Change
from .registry import ActionContext, register_action


def _blocks(graph: QGraph, ctx: ActionContext) -> dict[int, AttentionBlock]:
    """The attention cores by Softmax, found once per rule visit (a linear pass)."""
    if "attention_blocks" not in ctx.cache:
        ctx.cache["attention_blocks"] = {id(b.softmax): b for b in attention_blocks(graph)}
    return ctx.cache["attention_blocks"]


@register_action("insert_softmax_output_qdq", params={})
def insert_softmax_output_qdq(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Quantize a Softmax output (the anchor) that reaches an INT8-ready BMM2 in float, with the
    data-independent scale 1/127."""
    block = _blocks(graph, ctx).get(id(node)) if node is not None else None
    if block is None or not graph.contains(node):
        return []
    reader = softmax_qdq_reader(graph, block)
    if reader is None or ctx.any_ignored([block.bmm1.node, block.bmm2.node]):
        return []
    change = Change(
        "insert",
        [node.name, block.bmm2.node.name],
        f"Q/DQ (scale 1/127) on the probabilities of '{block.bmm2.node.name}', whose BMM1 and V "
        "are INT8",
    )
    if not ctx.dry_run:
        graph.insert_qdq(
            node.outputs[0],
            np.float32(SOFTMAX_INT8_SCALE),
            consumers=[reader],
            name=f"{node.name}_probs",
        )
    return [change]


@register_action("move_attention_scale", params={})
def move_attention_scale(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Move the constant Mul/Div after an INT8 BMM1 (the anchor) in front of one input's Q, that
    pair's scale times the factor."""
    move = attention_scale_move(graph, node) if node is not None else None
    if move is None or not graph.contains(node):
        return []
    op = move.scale.node
    if ctx.any_ignored([op, move.q, move.dq]):
        return []
    change = Change(
        "move",
        [op.name, node.name, move.q.name, move.dq.name],
        f"scores x {move.scale.factor:.6g} after '{node.name}' -> in front of '{move.q.name}' "
        "(its pair's scale x the same factor)",
    )
    if ctx.dry_run:
        return [change]
    out = op.outputs[0]
    scores = move.scale.clips[-1].outputs[0] if move.scale.clips else node.outputs[0]
    const = op.inputs[1] if op.inputs[0] is scores else op.inputs[0]
    x = move.q.inputs[0]
    scaled = gs.Variable(graph.unique_name(f"{x.name}_scaled"), dtype=x.dtype, shape=x.shape)
    # the same op and constant (Div stays Div): for a power-of-two factor every value is exact
    graph.add_node(op.op, [x, const], [scaled], graph.unique_name(f"{op.name}_moved"))
    graph.set_input(move.q, 0, scaled)
    scale = np.asarray(graph.qparams(move.q).scale, np.float64) * move.scale.factor
    graph.set_qparams(move.q, scale)
    graph.set_qparams(move.dq, scale)
    for clip in move.scale.clips:  # Clip(S, lo, hi) * f = Clip(S * f, lo * f, hi * f), f > 0
        for i in (1, 2):
            old = np.asarray(constant_value(clip.inputs[i]))
            bound = (old.astype(np.float64) * move.scale.factor).astype(old.dtype)
            graph.set_input(clip, i, graph.constant(f"{clip.name}_bound", bound))
    graph.replace_uses(out, scores)
    graph.remove_node(op)
    return [change]
