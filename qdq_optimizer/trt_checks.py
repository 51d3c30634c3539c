"""Lint checks written from TensorRT's documented behaviour (``docs/rules.md`` cites each fact):
they look at a graph and say where TensorRT would fall back to float, insert a Reformat, or fail
to fuse. A graph TensorRT can run fully in INT8 has no problems here.

``qdqopt lint`` reports each problem once: the rule set's rules report what their find half finds
(under the rule's id), and of these checks only those no rule of the set owns run (``FIXED_BY``:
check id -> the action that finds and fixes that problem). The checks a rule owns use the rule's
own selector (``trt_patterns``), so with ``--rules cleanup --checks on`` they say the same thing.

Check ids (all ``trt-*``):
- ``trt-qdq-type``: Q/DQ that is not int8 with zero point 0 (TensorRT's INT8 Q/DQ is symmetric).
- ``trt-qdq-axis``: per-axis scales on an activation, or weight scales not on the output-channel
  axis (0 for Conv/Gemm/MatMul, 1 for ConvTranspose).
- ``trt-weighted-input``: a weighted op with one input quantized and another not ("TensorRT
  expects a Q/DQ pair on each input of quantizable layers").
- ``trt-epilogue-qdq``: Q/DQ between a weighted op and its BatchNormalization/activation, or
  inside a SiLU (breaks the conv + BN + activation fusion).
- ``trt-residual-add``: a residual Add of a quantized conv branch whose conv-branch input has
  Q/DQ, or whose skip input is not INT8 (no INT8 epilogue fusion).
- ``trt-weighted-output``: Q/DQ on a weighted op's output that nothing INT8 reads.
- ``trt-float-island``: any other DQ whose value reaches no op using an INT8 input.
- ``trt-scale-group``: quantizers of one scale group (Concat, commuting ops incl. MaxPool, Qs of
  one tensor) with different scales: TensorRT requantizes (Reformat) instead of eliminating them.
- ``trt-maxpool-scale``: a quantized MaxPool with a non-positive scale (it commutes with
  quantization only for a positive scale; unequal positive scales are a ``trt-scale-group``).

Warnings (``check_warnings``, severity "warning": reported, never counted as problems, so they do
not change lint's exit status or optimize's remaining problems):
- ``trt-attention``: INT8 attention that TensorRT's documented fused-MHA restrictions rule out
  (``matmul_checks.attention_warnings``).
- ``trt-weight-per-tensor``: int8 weights quantized per tensor whose typical output channel uses
  under ``NARROW_CODES`` of its 127 codes (TensorRT quantizes weights per channel). One warning
  for the graph: an accuracy cost of the producer's choice that no rewrite can undo without the
  float weights (``weight-per-channel`` re-quantizes them from ``--reference``'s weights).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import onnx

from .graph import Node, QGraph, constant_value
from .matmul_checks import ATTENTION, attention_warnings, check_matmuls  # xrules
from .matmul_patterns import int4_weight_only_dqs, is_int4_weight_only, weighted_matmul
from .ops import GEMM_OPS
from .report import Problem
from .scale_groups import scale_groups
from .trt_patterns import (
    activation_pair,
    epilogue_pairs,
    fusion_target,
    input_quantized,
    is_const,
    is_ignored,
    is_int8_tensor,
    is_quantized_weighted,
    is_weight_dq,
    is_weighted,
    island_pairs,
    output_channel_axis,
    residual_inputs,
    strip_qdq,
    weight_axis,
    weight_quantized,
    weight_tensor,
    weighted_source,
)

# Check id -> the action (rule) that finds and fixes that problem. When a rule set has the
# action, lint reports the problem under that rule's id and skips the check.
FIXED_BY: dict[str, str] = {
    "trt-epilogue-qdq": "remove_epilogue_qdq",
    "trt-residual-add": "residual_add",
    "trt-weighted-output": "remove_weighted_output_qdq",
    "trt-float-island": "remove_float_islands",
    "trt-scale-group": "unify_scale_groups",
    "trt-bmm-input": "bmm_float_input",  # xrules
}
# Checks of one Q/DQ node's own parameters: a rule of the set that changes that node (re-quantizes
# it, as symmetric-int8 does uint8/asymmetric pairs, or removes it) already reports the problem.
NODE_CHECKS = frozenset({"trt-qdq-type", "trt-qdq-axis"})
# Checks wider than the rule that fixes part of them: a problem on nodes that rule changes is
# reported under the rule's id, the rest by the check (``trt-weighted-input`` also covers INT8
# weights under a float data input, which no rule fixes).
PARTLY_FIXED_BY: dict[str, str] = {"trt-weighted-input": "quantize_float_weights"}
CHECK_IDS = (
    "trt-qdq-type",
    "trt-qdq-axis",
    "trt-weighted-input",
    "trt-epilogue-qdq",
    "trt-residual-add",
    "trt-weighted-output",
    "trt-float-island",
    "trt-scale-group",
    "trt-maxpool-scale",
    "trt-bmm-input",  # xrules
)
PER_TENSOR = "trt-weight-per-tensor"
WARNING_IDS = (ATTENTION, PER_TENSOR)
# A weighted op warns when its median output channel uses fewer codes than this of the 127 a
# per-channel scale gives every channel: the typical channel has lost a bit or more.
NARROW_CODES = 64


def _scale(graph: QGraph, node: Node) -> np.ndarray | None:
    try:
        return graph.qparams(node).scale
    except ValueError:
        return None


def _fmt(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.6g}" for v in values)


def unowned_checks(actions: Iterable[str]) -> set[str]:
    """The check ids no action of ``actions`` (a rule set's) owns: what lint runs besides the
    rules' finds."""
    have = set(actions)
    return {c for c in CHECK_IDS if FIXED_BY.get(c) not in have}


def check_graph(
    graph: QGraph, ignore: Iterable[re.Pattern | str] = (), only: Iterable[str] | None = None
) -> list[Problem]:
    """TensorRT placement problems in ``graph`` (of the checks in ``only``, default all); nodes
    matching ``ignore`` are skipped."""
    patterns = [re.compile(p) if isinstance(p, str) else p for p in ignore]
    run = set(CHECK_IDS if only is None else only)
    problems: list[Problem] = []
    if run & {"trt-qdq-type", "trt-qdq-axis"}:
        problems += [p for p in _qdq_types(graph) if p.rule_id in run]
    if "trt-weighted-input" in run:
        problems += _weighted_inputs(graph, patterns)
    if "trt-epilogue-qdq" in run:
        problems += _epilogues(graph, patterns)
    if "trt-residual-add" in run:
        problems += _residuals(graph, patterns)
    if run & {"trt-weighted-output", "trt-float-island"}:
        problems += [p for p in _islands(graph, patterns) if p.rule_id in run]
    if "trt-scale-group" in run:
        problems += _groups(graph)
    if "trt-maxpool-scale" in run:
        problems += _maxpools(graph)
    if run & {"trt-qdq-axis", "trt-bmm-input"}:  # xrules: GEMM weight axis, BMM inputs
        problems += [p for p in check_matmuls(graph, patterns) if p.rule_id in run]
    return problems


def check_warnings(
    graph: QGraph, ignore: Iterable[re.Pattern | str] = (), actions: Iterable[str] = ()
) -> list[Problem]:
    """TensorRT warnings (``WARNING_IDS``) for ``graph``; ``actions`` are the linted rule set's,
    whose rules report the cases they fix themselves."""
    patterns = [re.compile(p) if isinstance(p, str) else p for p in ignore]
    return attention_warnings(graph, patterns, actions) + per_tensor_weights(graph, patterns)


def per_tensor_weights(graph: QGraph, ignore: list[re.Pattern]) -> list[Problem]:
    """``trt-weight-per-tensor``: one warning naming the weighted ops whose int8 weights (an
    initializer, no float values left) have one scale for all output channels and whose median
    channel uses fewer than ``NARROW_CODES`` codes."""
    narrow: list[str] = []
    total, worst = 0, None  # worst: (codes, op name, channel)
    for w in graph.topo_nodes():
        t = weight_tensor(graph, w)
        if t is None or is_ignored(w, ignore):
            continue
        dq = graph.producer(t)
        raw = constant_value(dq.inputs[0]) if graph.is_dq(dq) else None
        scale = _scale(graph, dq) if raw is not None else None
        axis = weight_axis(graph, t) if scale is not None and scale.size == 1 else None
        if axis is None or np.ndim(raw) < 2 or np.shape(raw)[axis] < 2:
            continue
        total += 1
        codes = (
            np.abs(np.moveaxis(np.asarray(raw, np.int32), axis, 0))
            .reshape(np.shape(raw)[axis], -1)
            .max(axis=1)
        )
        if np.median(codes) < NARROW_CODES:
            narrow.append(w.name)
            c = int(np.argmin(codes))
            if worst is None or codes[c] < worst[0]:
                worst = (int(codes[c]), w.name, c)
    if not narrow:
        return []
    message = (
        f"{len(narrow)} of {total} weighted ops with per-tensor int8 weights leave most output "
        f"channels under {NARROW_CODES} of 127 codes (fewest: '{worst[1]}' channel {worst[2]}, "
        f"{worst[0]}): TensorRT's per-channel weights would round them finer. Give optimize the "
        "float model (--reference FLOAT.onnx: weight-per-channel re-quantizes them from its "
        "weights), or quantize per channel in the producer (ONNX Runtime per_channel=True)"
    )
    return [Problem(PER_TENSOR, narrow, message, severity="warning")]


def _qdq_types(graph: QGraph) -> list[Problem]:
    out = []
    weight_only = int4_weight_only_dqs(graph)  # TensorRT's INT4 weight-only GEMMs: as written
    for n in graph.topo_nodes():
        if not (graph.is_q(n) or graph.is_dq(n)) or id(n) in weight_only:
            continue
        try:
            p = graph.qparams(n)
        except ValueError:
            out.append(Problem("trt-qdq-type", [n.name], "scale is not a constant"))
            continue
        if p.dtype != onnx.TensorProto.INT8:
            kind = onnx.TensorProto.DataType.Name(p.dtype)
            out.append(
                Problem(
                    "trt-qdq-type", [n.name], f"{kind} quantization; TensorRT's INT8 Q/DQ is int8"
                )
            )
        elif p.zero_point is not None and np.any(p.zero_point != 0):
            out.append(
                Problem(
                    "trt-qdq-type", [n.name], "zero point is not 0 (TensorRT INT8 is symmetric)"
                )
            )
        if not p.per_axis:
            continue
        weight = is_const(n.inputs[0]) or (graph.is_dq(n) and is_weight_dq(graph, n))
        if graph.is_q(n) and not weight:
            out.append(
                Problem(
                    "trt-qdq-axis",
                    [n.name],
                    "per-axis scale on an activation (TensorRT: per-tensor)",
                )
            )
            continue
        dq = (
            n if graph.is_dq(n) else next((c for c in n.outputs[0].outputs if graph.is_dq(c)), None)
        )
        users = dq.outputs[0].outputs if dq is not None else []
        for u in users:
            if not is_weighted(graph, u) or weight_tensor(graph, u) is not dq.outputs[0]:
                continue
            if u.op in ("Gemm", "MatMul"):  # xrules: matmul_checks follows the weight's path
                continue
            want = output_channel_axis(u)
            if p.axis != want:
                out.append(
                    Problem(
                        "trt-qdq-axis",
                        [n.name, u.name],
                        f"weight scales on axis {p.axis}, not the output-channel axis {want}",
                    )
                )
    return out


def _weighted_inputs(graph: QGraph, ignore: list[re.Pattern]) -> list[Problem]:
    out = []
    for w in graph.topo_nodes():
        if not is_weighted(graph, w) or is_ignored(w, ignore):
            continue
        data, weight = input_quantized(graph, w), weight_quantized(graph, w)
        if data and not weight:
            out.append(
                Problem(
                    "trt-weighted-input", [w.name], "data input is INT8 but the weight has no DQ"
                )
            )
        elif weight and not data and not _int4_weight_only(graph, w):
            out.append(
                Problem(
                    "trt-weighted-input",
                    [w.name],
                    "weight is quantized but the data input is not INT8",
                )
            )
    return out


def _int4_weight_only(graph: QGraph, node: Node) -> bool:
    wm = weighted_matmul(graph, node) if node.op in GEMM_OPS else None
    return wm is not None and is_int4_weight_only(graph, wm)


def _epilogues(graph: QGraph, ignore: list[re.Pattern]) -> list[Problem]:
    out = []
    for w in graph.topo_nodes():
        if not is_weighted(graph, w) or is_ignored(w, ignore):
            continue
        for f in epilogue_pairs(graph, w):
            readers = ", ".join(c.name for c in f.consumers or [])
            msg = f"{f.why.split(' (')[0]} (read by {readers})"
            out.append(Problem("trt-epilogue-qdq", [f.q.name, f.dq.name], msg))
    return out


def _residuals(graph: QGraph, ignore: list[re.Pattern]) -> list[Problem]:
    out = []
    for add in graph.nodes_of("Add"):
        split = residual_inputs(graph, add)
        if split is None or is_ignored(add, ignore):
            continue
        bi, si = split
        conv = fusion_target(graph, add, bi)
        if conv is None or not is_quantized_weighted(graph, conv):
            continue
        pair = activation_pair(graph, add.inputs[bi])
        if pair is not None:
            out.append(
                Problem(
                    "trt-residual-add",
                    [pair[0].name, pair[1].name],
                    f"conv-branch input of '{add.name}' (from '{conv.name}') has Q/DQ: blocks "
                    "the INT8 Add fusion",
                )
            )
        if not is_int8_tensor(graph, add.inputs[si]) and conv.op not in GEMM_OPS:  # xrules
            out.append(
                Problem(
                    "trt-residual-add",
                    [add.name],
                    f"skip input '{add.inputs[si].name}' is not quantized: the Add cannot fuse into '{conv.name}'",
                )
            )
    return out


def _islands(graph: QGraph, ignore: list[re.Pattern]) -> list[Problem]:
    out = []
    for q in graph.nodes_of("QuantizeLinear"):
        src = weighted_source(graph, q, ignore)
        for f in island_pairs(graph, q, ignore):
            if src is not None and graph.is_graph_output(f.dq.outputs[0]):
                continue  # as weighted-output-qdq: the output pair defines the graph output
            if src is not None:
                msg = f"output of '{src.name}' is quantized but nothing reads it in INT8"
                out.append(Problem("trt-weighted-output", [q.name, f.dq.name], msg))
            else:
                out.append(
                    Problem(
                        "trt-float-island", [q.name, f.dq.name], f"{f.why}: a Reformat for nothing"
                    )
                )
    return out


def _groups(graph: QGraph) -> list[Problem]:
    out = []
    for g in scale_groups(graph):
        scales = {}
        for q in g.quantizers:
            s = _scale(graph, q)
            if s is not None:
                scales[q.name] = float(s.reshape(-1)[0])
        if len(set(scales.values())) < 2:
            continue
        ops = sorted({op.op for op in g.ops}) or ["one tensor"]
        what = "concat cannot be eliminated; " if "Concat" in ops else ""
        out.append(
            Problem(
                "trt-scale-group",
                list(scales),
                f"quantizers joined by {'/'.join(ops)} have scales {_fmt(sorted(set(scales.values())))}: {what}TensorRT requantizes",
            )
        )
    return out


def _maxpools(graph: QGraph) -> list[Problem]:
    out = []
    for mp in graph.nodes_of("MaxPool"):
        x, y = mp.inputs[0], mp.outputs[0]
        qin: list[Node] = list(graph.quantizers_of(strip_qdq(graph, x)))
        pair = activation_pair(graph, x)
        if pair is not None:
            qin.append(pair[1])
        scales = [_scale(graph, n) for n in (*qin, *graph.quantizers_of(y))]
        if any(s is not None and np.any(s <= 0) for s in scales):
            out.append(
                Problem(
                    "trt-maxpool-scale",
                    [mp.name],
                    "non-positive scale: MaxPool does not commute with this quantization",
                )
            )
    return out
