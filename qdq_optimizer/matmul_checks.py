"""Lint checks for matrix multiplies (issue 11; facts in ``docs/transformers.md`` section 1).

- ``trt-qdq-axis`` for weighted GEMMs in every export form: the weight DQ's per-channel axis must
  be the stored weight's output-channel axis (``matmul_patterns.weight_output_axis``), also when
  the DQ sits behind a Transpose (pytorch-quantization's ``nn.Linear``). A Reshape on the path
  hides the axis: nothing is reported then.
- ``trt-bmm-input``: an activation x activation MatMul (attention's Q x K^T, softmax x V) with
  exactly one INT8 input. TensorRT expects a Q/DQ pair on each input of a quantizable layer, so
  it runs that matmul in float and the lone pair only adds a Reformat.

``trt_checks.check_graph`` calls ``check_matmuls``; these checks use the same predicates as the
rules (``matmul_patterns``), so lint and the rules agree on what a GEMM and a BMM are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .commute import is_int8_tensor
from .graph import QGraph, name_matches
from .matmul_patterns import is_activation_matmul, weight_output_axis, weighted_matmul
from .report import Problem


def check_matmuls(graph: QGraph, ignore: Iterable[re.Pattern] = ()) -> list[Problem]:
    """Weight-axis and BMM-input problems of every MatMul/Gemm, in topological order."""
    ignore = list(ignore)
    out: list[Problem] = []
    for node in graph.topo_nodes():
        if node.op not in ("MatMul", "Gemm"):
            continue
        wm = weighted_matmul(graph, node)
        if wm is not None:
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
