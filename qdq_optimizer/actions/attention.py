"""Rule ``bmm-input``: an activation x activation MatMul (attention's Q x K^T or softmax x V) with
exactly one INT8 input runs in float on TensorRT ("a Q/DQ pair on each input of quantizable
layers", ``docs/transformers.md`` 1.1/3.1.3), so its lone input pair only converts to INT8 and
back. ``float-islands`` removes such a pair when nothing else reads it in INT8; this rule handles
the rest: a DQ shared with an INT8 consumer (e.g. a weighted GEMM) is bypassed for the matmul
alone, so lint's ``trt-bmm-input`` and the rules agree. The pair's saturation stays as a Clip
(``clamps.py``), as in ``float-islands``.
"""

from __future__ import annotations

from ..commute import is_int8_tensor
from ..graph import Node, QGraph
from ..matmul_patterns import is_activation_matmul
from ..ops import DATA_MOVEMENT_OPS
from ..report import Change
from ..trt_patterns import activation_pair
from .clamps import bypass_keeping_saturation
from .registry import ActionContext, register_action

MAX_LAYOUT_HOPS = 4


@register_action("bmm_float_input", params={})
def bmm_float_input(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Bypass the lone input Q/DQ pair of an activation MatMul (the anchor) whose other input is
    float, for that MatMul only."""
    mm = node
    if not is_activation_matmul(graph, mm) or not graph.contains(mm):
        return []
    int8 = [is_int8_tensor(graph, t) for t in mm.inputs]
    if sum(int8) != 1:
        return []
    t, reader = mm.inputs[int8.index(True)], mm
    for _ in range(MAX_LAYOUT_HOPS):  # K's Transpose, head Reshapes: read by this path only
        p = graph.producer(t)
        if p is None or graph.is_dq(p) or p.op not in DATA_MOVEMENT_OPS or len(t.outputs) != 1:
            break
        t, reader = p.inputs[0], p
    pair = activation_pair(graph, t)
    if pair is None:
        return []  # a Concat or a shared layout op between: not this matmul's pair alone
    change = Change(
        "remove",
        [pair[0].name, pair[1].name],
        f"lone INT8 input of '{mm.name}' (its other input is float: TensorRT runs it in float)",
    )
    if not ctx.dry_run:
        bypass_keeping_saturation(graph, *pair, consumers=[reader])
    return [change]
