"""Lint checks for matrix multiplies (issue 11; facts in ``docs/transformers.md`` section 1).

- ``trt-qdq-axis`` for weighted GEMMs in every export form: the weight DQ's per-channel axis must
  be the stored weight's output-channel axis (``matmul_patterns.weight_output_axis``), also when
  the DQ sits behind a Transpose (pytorch-quantization's ``nn.Linear``). A Reshape on the path
  hides the axis: nothing is reported then.
- ``trt-bmm-input``: an activation x activation MatMul (attention's Q x K^T, softmax x V) with
  exactly one INT8 input. TensorRT expects a Q/DQ pair on each input of a quantizable layer, so
  it runs that matmul in float and the lone pair only adds a Reformat.

- ``trt-attention`` (warnings, never errors: the restrictions are quoted from TensorRT 8.6's
  developer guide and the 10.x/11 text was not found; docs/transformers.md 1.2, 3.3): an INT8 BMM1
  whose Softmax output reaches BMM2 in float; an INT8 BMM1 whose scores are scaled after it; an
  INT8 attention whose head size is not 16/32/64 or whose sequence length exceeds 512 (static
  shapes only). Each message quotes the fact.

``trt_checks.check_graph`` calls ``check_matmuls`` and ``trt_checks.check_warnings`` calls
``attention_warnings``; these checks use the same predicates as the rules (``matmul_patterns``),
so lint and the rules agree on what a GEMM, a BMM and an attention core are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .commute import is_int8_tensor
from .graph import QGraph, name_matches
from .matmul_patterns import (
    AttentionBlock,
    attention_blocks,
    attention_scale_move,
    attention_shape,
    is_activation_matmul,
    is_int4_weight_only,
    is_int8_matmul,
    softmax_qdq_reader,
    weight_output_axis,
    weighted_matmul,
)
from .ops import INT8_MHA_HEAD_SIZES, INT8_MHA_MAX_SEQ
from .report import Problem

ATTENTION = "trt-attention"
# The facts the warnings quote (docs/transformers.md 1.2 has the sources).
_FACT_QDQ = (
    'TensorRT: "INT8 fused MHA will be generated only if quantized and dequantized layers are '
    "placed before the first batched matrix multiplication, after softmax, and after the second "
    'batched matrix multiplication" (8.6 developer guide, mha-fusion)'
)
_FACT_SCALE = (
    'TensorRT: "TensorRT requires Q or K to be multiplied with attention scale or both Q and K to '
    "be multiplied with sqrt(attention scale) before going into IAttention or the first Batched "
    'Matrix Multiply (BMM)" (Fused Attention)'
)
_FACT_SHAPE = (
    "TensorRT: for INT8 fused MHA the head size must be 16, 32 or 64 and the sequence lengths at "
    "most 512 (8.6 developer guide, mha-fusion)"
)
# The action of the opt-in ``attention`` rule set that fixes each kind: when the linted rule set
# has it, the rule reports what it would change (under its own id) and the warning is left out
# for exactly those cases.
SOFTMAX_QDQ_ACTION = "insert_softmax_output_qdq"
SCALE_MOVE_ACTION = "move_attention_scale"


def check_matmuls(graph: QGraph, ignore: Iterable[re.Pattern] = ()) -> list[Problem]:
    """Weight-axis and BMM-input problems of every MatMul/Gemm, in topological order."""
    ignore = list(ignore)
    out: list[Problem] = []
    for node in graph.topo_nodes():
        if node.op not in ("MatMul", "Gemm"):
            continue
        wm = weighted_matmul(graph, node)
        if wm is not None and not is_int4_weight_only(graph, wm):  # its blocks run along K
            out += _weight_axis(graph, wm)
        elif is_activation_matmul(graph, node) and not name_matches(node.name, ignore):
            int8 = [is_int8_tensor(graph, t) for t in node.inputs]
            if sum(int8) == 1:
                which = "first" if int8[0] else "second"
                out.append(
                    Problem(
                        "trt-bmm-input",
                        [node.name],
                        f"only the {which} input is INT8: TensorRT runs this matmul in float "
                        "(quantize both inputs or neither)",
                    )
                )
    return out


def _weight_axis(graph: QGraph, wm) -> list[Problem]:
    dq = wm.weight.dq
    if dq is None:
        return []
    try:
        p = graph.qparams(dq)
    except ValueError:
        return []  # trt_checks reports a non-constant scale
    want = weight_output_axis(wm)
    if not p.per_axis or want is None or p.axis == want:
        return []
    return [
        Problem(
            "trt-qdq-axis",
            [dq.name, wm.node.name],
            f"weight scales on axis {p.axis}, not the output-channel axis {want}",
        )
    ]


def attention_warnings(
    graph: QGraph, ignore: Iterable[re.Pattern] = (), actions: Iterable[str] = ()
) -> list[Problem]:
    """``trt-attention`` warnings for every attention core with an INT8 BMM1 (or INT8 BMM2), in
    topological order. ``actions`` are the linted rule set's actions: a case one of them fixes is
    its rule's to report."""
    ignore, have = list(ignore), set(actions)
    out: list[Problem] = []
    for block in attention_blocks(graph):
        names = [m.node.name for m in (block.bmm1, block.bmm2) if m is not None]
        if any(name_matches(n, ignore) for n in names):
            continue
        out += _softmax_warning(graph, block, have) + _scale_warning(graph, block, have)
        out += _shape_warning(graph, block)
    return out


def _warn(nodes: list[str], message: str) -> Problem:
    return Problem(ATTENTION, nodes, message, severity="warning")


def _softmax_warning(graph: QGraph, block: AttentionBlock, have: set[str]) -> list[Problem]:
    if block.bmm1 is None or block.bmm2 is None or not is_int8_matmul(graph, block.bmm1.node):
        return []
    if is_int8_tensor(graph, block.probabilities()):
        return []
    if SOFTMAX_QDQ_ACTION in have and softmax_qdq_reader(graph, block) is not None:
        return []
    v_int8 = is_int8_tensor(graph, block.values())
    what = (
        "BMM2's V input is INT8 but the Softmax output reaches it in float (the attention rule "
        "set's softmax-output-qdq quantizes it with scale 1/127)"
        if v_int8
        else "BMM1 is INT8 but BMM2 (Softmax output x V) runs in float"
    )
    nodes = [block.bmm1.node.name, block.softmax.name, block.bmm2.node.name]
    return [_warn(nodes, f"{what}: no INT8 fused attention. {_FACT_QDQ}")]


def _scale_warning(graph: QGraph, block: AttentionBlock, have: set[str]) -> list[Problem]:
    bmm1 = block.bmm1
    if bmm1 is None or not bmm1.scaled_after or not is_int8_matmul(graph, bmm1.node):
        return []
    if SCALE_MOVE_ACTION in have and attention_scale_move(graph, bmm1.node) is not None:
        return []
    scale = next(n for n in bmm1.between if n.op in ("Mul", "Div"))
    return [
        _warn(
            [bmm1.node.name, scale.name],
            f"the attention scale ({scale.op} '{scale.name}') is applied after BMM1, between it "
            f"and the Softmax (the attention rule set's attention-scale-before-bmm1 moves it "
            f"onto Q). {_FACT_SCALE}",
        )
    ]


def _shape_warning(graph: QGraph, block: AttentionBlock) -> list[Problem]:
    int8 = [m for m in (block.bmm1, block.bmm2) if m is not None and is_int8_matmul(graph, m.node)]
    if not int8:
        return []
    shape = attention_shape(block)
    bad = [
        f"{what} head size {d}"
        for what, d in (("Q/K", shape.head_qk), ("V", shape.head_v))
        if d is not None and d not in INT8_MHA_HEAD_SIZES
    ]
    bad += [
        f"{what} sequence length {n} > {INT8_MHA_MAX_SEQ}"
        for what, n in (("query", shape.seq_q), ("key/value", shape.seq_kv))
        if n is not None and n > INT8_MHA_MAX_SEQ
    ]
    if not bad:
        return []
    nodes = [m.node.name for m in (block.bmm1, block.bmm2) if m is not None]
    return [_warn(nodes, f"INT8 attention with {', '.join(bad)}: no INT8 fused MHA. {_FACT_SHAPE}")]
