"""Input validation: refuse models the rules cannot safely rewrite, before any work starts.

Every check is one linear pass over the graph (dicts keyed by tensor name, Kahn's algorithm for
cycles, no recursion over nodes), so a 100k-node model validates in about a second. Problems
raise :class:`~qdq_optimizer.errors.InputError` naming the node; things that are allowed but
left alone (int4 Q/DQ, blocked quantization) come back as warnings. uint8 and asymmetric int8
are accepted: the ``symmetric-int8`` rule converts them. int16/uint16 and FP8 are refused (see
``_INT16``, ``_FP8``).
Unknown ops (custom domains, ops the installed onnx does not know) pass through untouched.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx
from onnx import TensorProto, checker, defs, numpy_helper

from .asymmetric import INT_RANGES
from .contrib_qdq import CONTRIB_DOMAIN
from .errors import InputError
from .model_io import check_tensor_data as _check_tensor_data
from .protos import (
    DEQUANTIZE,
    FLOAT_TYPES,
    QUANTIZE,
    attr_int,
    constant_payload,
    implicit_quant_dtype,
    is_float_dtype,
    payload_dtype,
)

MIN_OPSET = 13
# ONNX Runtime's QOperator and dynamic quantization formats: integer ops instead of Q/DQ pairs
# around float ops (quantize_static(quant_format=QOperator), quantize_dynamic). No rule can read
# them and TensorRT parses Q/DQ only, so such a model is refused, naming the first one.
_QOPERATOR_OPS = frozenset(
    {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QGemm", "QAttention"}
    | {"DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM"}
)
# TensorRT's Q/DQ are int8, fp8 and int4: an int16 model must be re-quantized at int8 by its
# quantizer (with its calibration data); rewriting the scales here would lose up to 16 dB.
_INT16 = frozenset({TensorProto.INT16, TensorProto.UINT16})
# FP8 is another TensorRT precision with placement rules of its own (Hopper+); the rules and lint
# are INT8's, so an FP8 model is refused rather than reported as wrong-typed pairs.
_FP8 = frozenset(
    {
        TensorProto.FLOAT8E4M3FN,
        TensorProto.FLOAT8E4M3FNUZ,
        TensorProto.FLOAT8E5M2,
        TensorProto.FLOAT8E5M2FNUZ,
    }
)
_DEFAULT_DOMAINS = ("", "ai.onnx")
# ONNX Runtime's contrib Q/DQ still there after contrib_qdq moved what it could: checked alike
_QDQ_DOMAINS = (*_DEFAULT_DOMAINS, CONTRIB_DOMAIN)
_SCALE_TYPES = FLOAT_TYPES  # a Q/DQ scale is of a float type


def validate_model(model: onnx.ModelProto) -> list[str]:
    """Check ``model`` for everything qdqopt relies on; return warnings, raise InputError."""
    warnings: list[str] = []
    opset = _check_opset(model)
    graph = model.graph
    ctx = checker.C.CheckerContext()
    ctx.ir_version = model.ir_version
    ctx.opset_imports = {
        ("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import
    }

    # ---- names: one producer per tensor, no shadowing
    inits: dict[str, TensorProto] = {}
    for t in graph.initializer:
        if not t.name:
            raise InputError("an initializer has an empty name")
        if t.name in inits:
            raise InputError(f"initializer '{t.name}' is defined twice")
        inits[t.name] = t
        _check_tensor_data(t, f"initializer '{t.name}'")
    for sp in graph.sparse_initializer:
        raise InputError(f"sparse initializer '{sp.values.name}' is not supported")
    graph_inputs = set()
    for vi in graph.input:
        if vi.name in graph_inputs:
            raise InputError(f"graph input '{vi.name}' is declared twice")
        graph_inputs.add(vi.name)
    producer: dict[str, int] = {}
    nodes = list(graph.node)
    for i, node in enumerate(nodes):
        for out in node.output:
            if not out:
                continue
            if out in producer:
                other = _label(nodes[producer[out]], producer[out])
                raise InputError(
                    f"tensor '{out}' is produced twice: by {other} and by {_label(node, i)}"
                )
            if out in inits:
                raise InputError(
                    f"{_label(node, i)} output '{out}' shadows an initializer of the same name"
                )
            if out in graph_inputs:
                raise InputError(
                    f"{_label(node, i)} output '{out}' shadows a graph input of the same name"
                )
            producer[out] = i

    # ---- dangling inputs and outputs
    available = graph_inputs | inits.keys() | producer.keys()
    for i, node in enumerate(nodes):
        for name in node.input:
            if name and name not in available:
                raise InputError(
                    f"{_label(node, i)} reads '{name}', which no node, initializer or "
                    "graph input provides (dangling input)"
                )
    for vi in graph.output:
        if vi.name not in available:
            raise InputError(f"graph output '{vi.name}' is not produced by any node")

    # ---- cycles (Kahn's algorithm; graphs need not be sorted, but must be acyclic)
    _check_acyclic(nodes, producer)

    # ---- per node: schema (attributes, input counts), then Q/DQ parameters
    shapes = _known_shapes(graph, inits)
    for i, node in enumerate(nodes):
        if node.op_type.startswith("QLinear") or node.op_type in _QOPERATOR_OPS:
            raise InputError(
                f"{_label(node, i)} is QOperator-format quantization (integer ops, not Q/DQ "
                "pairs): qdqopt and TensorRT read Q/DQ only; quantize with "
                "quant_format=QuantFormat.QDQ"
            )
        _check_schema(node, i, ctx, opset)
        if node.op_type in (QUANTIZE, DEQUANTIZE) and node.domain in _QDQ_DOMAINS:
            _check_qdq(node, i, nodes, producer, inits, shapes, warnings)
    return warnings


# ---------------------------------------------------------------------------------------- parts
def _label(node: onnx.NodeProto, index: int) -> str:
    name = f"'{node.name}'" if node.name else f"#{index} (unnamed)"
    return f"node {name} ({node.op_type})"


def _check_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise InputError("model imports no default-domain (ai.onnx) opset")
    opset = max(versions)
    if opset < MIN_OPSET:
        raise InputError(
            f"model opset {opset} is below {MIN_OPSET}: per-axis Q/DQ needs opset 13; "
            "re-export with opset_version>=13 (or convert with onnx.version_converter)"
        )
    return opset


def kahn_order(nodes, producer: dict[str, int]) -> tuple[list[int], list[int]]:
    """Node indices producers first (Kahn's algorithm), and per node the number of its producers
    never placed: non-zero only for nodes on or behind a cycle, which the order leaves out."""
    n = len(nodes)
    indeg = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for i, node in enumerate(nodes):
        preds = {producer[x] for x in node.input if x in producer}
        indeg[i] = len(preds)
        for p in preds:
            succ[p].append(i)
    ready = deque(i for i in range(n) if indeg[i] == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for s in succ[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    return order, indeg


def _check_acyclic(nodes: list[onnx.NodeProto], producer: dict[str, int]) -> None:
    n = len(nodes)
    order, indeg = kahn_order(nodes, producer)
    if len(order) == n:
        return
    # Walk back along unfinished predecessors until a node repeats: that node is on a cycle.
    start = next(i for i in range(n) if indeg[i] > 0)
    seen: dict[int, int] = {}
    cur = start
    path: list[int] = []
    while cur not in seen:
        seen[cur] = len(path)
        path.append(cur)
        cur = next(
            producer[x] for x in nodes[cur].input if x in producer and indeg[producer[x]] > 0
        )
    cycle = path[seen[cur] :][::-1]
    names = " -> ".join(nodes[j].name or f"#{j}" for j in cycle[:6])
    more = " -> ..." if len(cycle) > 6 else ""
    raise InputError(
        f"graph has a cycle through {_label(nodes[cur], cur)}: {names}{more} -> "
        f"{nodes[cycle[0]].name or f'#{cycle[0]}'}"
    )


def _check_schema(node: onnx.NodeProto, i: int, ctx: checker.C.CheckerContext, opset: int) -> None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    if not defs.has(node.op_type, domain):
        return  # unknown op: passes through untouched
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return  # control flow: subgraphs may read outer-scope names; passed through
    version = ctx.opset_imports.get(domain)
    if version is None:
        raise InputError(f"{_label(node, i)}: its domain '{domain}' is not in the model's opsets")
    try:
        defs.get_schema(node.op_type, version, domain)
    except defs.SchemaError:
        raise InputError(
            f"{_label(node, i)}: op does not exist in opset {version} of '{domain or 'ai.onnx'}'"
        ) from None
    try:
        checker.check_node(node, ctx)
    except checker.ValidationError as exc:
        msg = " ".join(str(exc).split("==>")[0].split())
        raise InputError(f"{_label(node, i)}: {msg}") from None


def _known_shapes(graph: onnx.GraphProto, inits: dict[str, TensorProto]) -> dict[str, list]:
    """Static shapes known without inference: initializers, graph inputs, value_info."""
    shapes: dict[str, list] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim
            ]
    for name, t in inits.items():
        shapes[name] = list(t.dims)
    return shapes


def _to_array(value: TensorProto | np.ndarray, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    _check_tensor_data(value, what)
    try:
        return numpy_helper.to_array(value)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is bad input
        raise InputError(f"{what} cannot be decoded: {' '.join(str(exc).split())[:120]}") from None


def _dtype_name(dt: int) -> str:
    try:
        return TensorProto.DataType.Name(dt).lower()
    except ValueError:
        return f"type {dt}"


def _check_qdq(
    node: onnx.NodeProto,
    i: int,
    nodes: list[onnx.NodeProto],
    producer: dict[str, int],
    inits: dict[str, TensorProto],
    shapes: dict[str, list],
    warnings: list[str],
) -> None:
    label = _label(node, i)
    if len(node.input) < 2 or not node.input[1]:
        raise InputError(f"{label} has no scale input")
    scale_src = constant_payload(node.input[1], nodes, producer, inits)
    if scale_src is None:
        raise InputError(
            f"{label} has a non-constant scale '{node.input[1]}' (scales must be initializers "
            "or Constant nodes)"
        )
    if isinstance(scale_src, TensorProto) and scale_src.data_type not in _SCALE_TYPES:
        raise InputError(f"{label} scale has type {_dtype_name(scale_src.data_type)}, not float")
    scale = _to_array(scale_src, f"{label} scale")
    if not is_float_dtype(scale.dtype):
        raise InputError(f"{label} scale has dtype {scale.dtype}, not float")
    if scale.size == 0:
        raise InputError(f"{label} has an empty scale")
    s32 = scale.astype(np.float64)
    if not np.all(np.isfinite(s32)):
        raise InputError(f"{label} has a NaN or infinite scale")
    if np.any(s32 < 0) or (
        np.any(s32 == 0) and not _zero_scales_on_zero_channels(node, s32, nodes, producer, inits)
    ):
        raise InputError(
            f"{label} has a zero or negative scale (min {float(s32.min()):g}); TensorRT's parser "
            "takes positive scales only"
        )
    if attr_int(node, "block_size", 0):
        _check_blocks(node, label, list(scale.shape), shapes.get(node.input[0]))
    if scale.ndim > 1:
        warnings.append(
            f"{label}: blocked quantization (scale shape {list(scale.shape)}) is not handled "
            "by the rules; passed through untouched"
        )
        return

    zp = None
    if len(node.input) > 2 and node.input[2]:
        zp_src = constant_payload(node.input[2], nodes, producer, inits)
        if zp_src is None:
            raise InputError(f"{label} has a non-constant zero point '{node.input[2]}'")
        zp = _to_array(zp_src, f"{label} zero point")
        if zp.shape != scale.shape and not (zp.size == 1 and scale.size == 1):
            raise InputError(
                f"{label} zero point shape {list(zp.shape)} differs from scale shape "
                f"{list(scale.shape)}"
            )
        dtype = payload_dtype(zp_src)
    else:
        dtype = implicit_quant_dtype(node, nodes, producer, inits)

    if dtype in _INT16:
        raise InputError(
            f"{label} is {_dtype_name(dtype)} quantization: TensorRT's Q/DQ are int8, fp8 and "
            "int4; re-quantize with int8 activations and weights (ONNX Runtime: "
            "activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)"
        )
    if dtype in _FP8:
        raise InputError(
            f"{label} is {_dtype_name(dtype)} (FP8) quantization: qdqopt places INT8 Q/DQ; "
            "TensorRT runs FP8 Q/DQ as placed (quantize at int8 to use qdqopt, e.g. ModelOpt "
            "quantize_mode='int8')"
        )
    if dtype not in INT_RANGES and dtype is not None:
        # int8 and uint8, symmetric or not, are handled (symmetric-int8 converts the latter)
        warnings.append(
            f"{label}: {_dtype_name(dtype)} Q/DQ is not handled by the rules "
            "(they handle int8 and uint8); passed through untouched"
        )

    block = attr_int(node, "block_size", 0)
    if block:
        warnings.append(f"{label}: blocked quantization is not handled; passed through untouched")
        return
    if scale.size > 1:
        axis = attr_int(node, "axis", 1)
        shape = shapes.get(node.input[0])
        if shape is not None:
            _check_axis(label, axis, len(shape))
            dim = shape[axis]
            if dim is not None and dim != scale.size:
                raise InputError(
                    f"{label} has {scale.size} per-axis scales but input dimension {axis} is {dim}"
                )
        elif axis < -8 or axis > 8:
            raise InputError(f"{label} has an implausible axis {axis}")


def _check_axis(label: str, axis: int, rank: int) -> None:
    if not -rank <= axis < rank:
        raise InputError(f"{label} has axis {axis}, out of range for rank {rank} input")


def _check_blocks(
    node: onnx.NodeProto, label: str, scale_shape: list[int], shape: list | None
) -> None:
    """A blocked Q/DQ's scale has its input's shape with ``ceil(D / block_size)`` on the blocked
    axis (ONNX's rule). The checker does not look, and ONNX Runtime fails only when it runs the
    node (ModelOpt's int4 ``awq_clip`` writes a Gemm weight's [N, 1] scale on axis 0)."""
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape):
        return
    block, rank = attr_int(node, "block_size", 0), len(shape)
    axis = attr_int(node, "axis", 1)
    _check_axis(label, axis, rank)
    want = [-(-d // block) if i == axis % rank else d for i, d in enumerate(shape)]
    if scale_shape != want:
        raise InputError(
            f"{label} has blocked scales of shape {scale_shape}, but input {shape} with "
            f"block_size {block} on axis {axis} needs {want}: no runtime can run it "
            "(re-export it from the producer)"
        )


def _zero_scales_on_zero_channels(
    node: onnx.NodeProto,
    scale: np.ndarray,
    nodes: list[onnx.NodeProto],
    producer: dict[str, int],
    inits: dict[str, TensorProto],
) -> bool:
    """A zero scale is accepted only on a per-channel weight whose channel is all zero: any
    positive scale is exact there, and the ``zero-scale-channels`` rule puts one in."""
    if scale.ndim != 1 or scale.size < 2:
        return False
    src = constant_payload(node.input[0], nodes, producer, inits)
    if src is None and node.op_type == DEQUANTIZE:  # pair form: DQ(Q(W float))
        j = producer.get(node.input[0])
        if j is not None and nodes[j].op_type == QUANTIZE:
            src = constant_payload(nodes[j].input[0], nodes, producer, inits)
    if src is None:
        return False
    w = _to_array(src, f"{_label(node, 0)} input")
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if w.ndim == 0 or not -w.ndim <= axis < w.ndim or w.shape[axis] != scale.size:
        return False
    per_channel = np.moveaxis(w, axis, 0).reshape(scale.size, -1)
    return bool(np.all(per_channel[scale == 0] == 0))
