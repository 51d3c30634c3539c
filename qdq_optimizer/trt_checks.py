"""Lint checks written from TensorRT's documented behaviour (``docs/rules.md`` cites each fact),
not from what the optimizer's rules do: they look at a graph and say where TensorRT would fall
back to float, insert a Reformat, or fail to fuse. ``qdqopt lint`` runs them after the rules'
dry run; a graph TensorRT can run fully in INT8 has no problems here.

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
- ``trt-scale-group``: quantizers of one scale group (Concat, commuting ops, Qs of one tensor)
  with different scales: TensorRT requantizes (Reformat) instead of eliminating the concat.
- ``trt-maxpool-scale``: a MaxPool whose input and output quantization differ, or whose scale is
  not positive (it commutes with quantization only for a positive scale).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import onnx

from .graph import Node, QGraph
from .matmul_checks import check_matmuls  # xrules
from .matmul_patterns import GEMM_OPS  # xrules
from .report import Problem
from .scale_groups import scale_groups
from .trt_patterns import (
    ACTIVATIONS,
    activation_pair,
    epilogue_source,
    feeds_int8,
    input_quantized,
    is_const,
    is_ignored,
    is_quantized_weighted,
    is_weight_dq,
    is_weighted,
    residual_inputs,
    strip_qdq,
    weight_quantized,
    weight_tensor,
)


def _scale(graph: QGraph, node: Node) -> np.ndarray | None:
    try:
        return graph.qparams(node).scale
    except ValueError:
        return None


def _fmt(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.6g}" for v in values)


def check_graph(graph: QGraph, ignore: Iterable[re.Pattern | str] = ()) -> list[Problem]:
    """Every TensorRT placement problem in ``graph``; nodes matching ``ignore`` are skipped."""
    patterns = [re.compile(p) if isinstance(p, str) else p for p in ignore]
    problems: list[Problem] = []
    problems += _qdq_types(graph)
    problems += _weighted_inputs(graph, patterns)
    problems += _epilogues(graph, patterns)
    problems += _residuals(graph, patterns)
    problems += _islands(graph, patterns)
    problems += _groups(graph)
    problems += _maxpools(graph)
    problems += check_matmuls(graph, patterns)  # xrules: GEMM weight axis, trt-bmm-input
    return problems


def _qdq_types(graph: QGraph) -> list[Problem]:
    out = []
    for n in graph.topo_nodes():
        if not (graph.is_q(n) or graph.is_dq(n)):
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
            want = 1 if u.op == "ConvTranspose" else 0
            if u.op in ("Gemm", "MatMul"):
                want = 0 if u.op == "Gemm" and u.attrs.get("transB", 0) else 1
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
        elif weight and not data:
            out.append(
                Problem(
                    "trt-weighted-input",
                    [w.name],
                    "weight is quantized but the data input is not INT8",
                )
            )
    return out


def _epilogues(graph: QGraph, ignore: list[re.Pattern]) -> list[Problem]:
    out = []
    for n in graph.topo_nodes():
        if n.op not in ACTIVATIONS and n.op not in ("BatchNormalization", "Mul"):
            continue
        for t in n.inputs[:2] if n.op == "Mul" else n.inputs[:1]:
            pair = activation_pair(graph, t)
            if pair is None:
                continue
            src = graph.producer(pair[0].inputs[0])
            if src is None:
                continue
            if is_weighted(graph, src) or src.op == "BatchNormalization":
                if n.op == "Mul" and not _silu_mul(graph, n):
                    continue
                owner = src if is_weighted(graph, src) else epilogue_source(graph, src.outputs[0])
                if owner is None or is_ignored(owner, ignore):
                    continue
                out.append(
                    Problem(
                        "trt-epilogue-qdq",
                        [pair[0].name, n.name],
                        f"Q/DQ between '{src.name}' and '{n.name}' breaks the conv fusion",
                    )
                )
            elif src.op in ("Sigmoid", "HardSigmoid") and n.op == "Mul" and _silu_mul(graph, n):
                owner = epilogue_source(graph, n.outputs[0])
                if owner is not None and not is_ignored(owner, ignore):
                    out.append(
                        Problem(
                            "trt-epilogue-qdq",
                            [pair[0].name, n.name],
                            f"Q/DQ inside the SiLU after '{owner.name}'",
                        )
                    )
    return out


def _silu_mul(graph: QGraph, mul: Node) -> bool:
    if len(mul.inputs) != 2:
        return False
    a, b = (strip_qdq(graph, t) for t in mul.inputs)
    for u, v in ((a, b), (b, a)):
        p = graph.producer(v)
        if (
            p is not None
            and p.op in ("Sigmoid", "HardSigmoid")
            and strip_qdq(graph, p.inputs[0]) is u
        ):
            return True
    return False


def _residuals(graph: QGraph, ignore: list[re.Pattern]) -> list[Problem]:
    out = []
    for add in graph.nodes_of("Add"):
        split = residual_inputs(graph, add)
        if split is None or is_ignored(add, ignore):
            continue
        bi, si = split
        conv = epilogue_source(graph, add.inputs[bi])
        if conv is None or not is_quantized_weighted(graph, conv):
            continue
        if activation_pair(graph, add.inputs[bi]) is not None:
            out.append(
                Problem(
                    "trt-residual-add",
                    [add.name],
                    f"conv-branch input (from '{conv.name}') has Q/DQ: blocks the INT8 Add fusion",
                )
            )
        if not graph.is_int8_tensor(add.inputs[si]) and conv.op not in GEMM_OPS:  # xrules
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
        if is_const(q.inputs[0]):
            continue
        src = graph.producer(q.inputs[0])
        for dq in q.outputs[0].outputs:
            if not graph.is_dq(dq) or feeds_int8(graph, dq.outputs[0], ignore):
                continue
            if src is not None and is_weighted(graph, src):
                msg = f"output of '{src.name}' is quantized but nothing reads it in INT8"
                out.append(Problem("trt-weighted-output", [q.name, src.name], msg))
            else:
                readers = ", ".join(c.name for c in dq.outputs[0].outputs) or "a graph output"
                out.append(
                    Problem(
                        "trt-float-island",
                        [q.name, dq.name],
                        f"DQ feeds only float ops ({readers}): a Reformat for nothing",
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
        qout = graph.quantizers_of(y)
        scales = [(n.name, _scale(graph, n)) for n in (*qin, *qout)]
        values = [float(s.reshape(-1)[0]) for _, s in scales if s is not None]
        if any(v <= 0 for v in values):
            out.append(
                Problem(
                    "trt-maxpool-scale",
                    [mp.name],
                    "non-positive scale: MaxPool does not commute with this quantization",
                )
            )
        if qin and qout and len(set(values)) > 1:
            out.append(
                Problem(
                    "trt-maxpool-scale",
                    [mp.name],
                    f"input and output quantization differ ({_fmt(sorted(set(values)))})",
                )
            )
    return out
