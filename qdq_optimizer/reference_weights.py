"""Float weights from the user's float model (``--reference``) for the integer weights a rule
re-rounds: int8 (or int4) weights held per tensor, which ``weight-per-channel`` re-quantizes per
output channel, as TensorRT quantizes weights, and uint8 or asymmetric weights of any granularity,
which ``symmetric-int8`` re-quantizes symmetric. The model itself keeps no float values (ONNX
Runtime's ``per_channel=False`` default and NNCF write integer initializers); re-rounding its
rounded values would round twice.

A pre-pass, like the calibration one: it runs before the rules and hands them its result in
settings (``observed_float_weights``: weighted op name -> float weight), so the rules stay graph
rewrites. A float weight is taken only when it provably is the one that was quantized: the op is
the reference's op of the same name (quantizers keep node names) or, where no op has that name,
the one that writes the same output tensor, itself or through the BatchNormalization that alone
reads it (a producer that folds BN itself and renames the node: AMD Quark names the folded conv
after the conv's old output and writes the BN's), ``reference_ops``; it has the same weight
shape, and rounding the float weight with the model's own scales gives its integer values
(``|w - s (q - z)| <= s/2`` everywhere, per channel where the scales are, a little slack for
float arithmetic). A float conv whose output only a BatchNormalization reads is tried with the
BN folded in as well: ONNX Runtime's pre-processing folds BN before it quantizes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from .batchnorm import bn_scale
from .biases import float_bias
from .graph import Node, QGraph, constant_value
from .ops import CONV_OPS, WEIGHTED_OPS
from .protos import constant_tensors, is_float_dtype
from .qdq_numpy import axis_shape, centered_np
from .trt_patterns import output_channel_axis, weight_tensor

SLACK = 1e-3  # in steps: float32 division and rounding in the quantizer
FLOAT_WEIGHTS = "observed_float_weights"  # the setting: op name -> float weight
REFERENCE_NAMES = "reference_op_names"  # the setting: op name -> the reference's, where they differ
BIAS_CORRECTED = "bias_corrected_ops"  # the setting: ops whose bias the producer corrected


def float_weight_for(graph: QGraph, dq: Node, settings: dict) -> np.ndarray | None:
    """The reference's float weight for the integer initializer ``dq`` reads, from the pre-pass's
    setting: ``dq`` must feed exactly one weighted op, by that op's name, of the same shape, and
    its integers must still be what that float weight rounds to under its current scales (a rule
    that rescaled the weight since, e.g. ``channel-scales``, ends the match)."""
    readers = dq.outputs[0].outputs if dq.outputs else []
    found = settings.get(FLOAT_WEIGHTS) or {}
    if len(readers) != 1 or readers[0].name not in found:
        return None
    if len(readers[0].inputs) < 2 or readers[0].inputs[1] is not dq.outputs[0]:
        return None  # read as the op's data, not its weight
    w = found[readers[0].name]
    held = _held_weight(graph, dq)
    if held is None or held[0].shape != np.shape(w):
        return None
    return w if _rounds_to(w, *held) else None


Held = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "int | None"]


def _held_weight(graph: QGraph, dq: Node) -> Held | None:
    """(integer values, scale, zero point, axis) of the integer initializer ``dq`` reads; int4
    values as int8 (``symmetric-int8`` widens them to int8, the same values)."""
    raw = constant_value(dq.inputs[0])
    if raw is None or dq.attrs.get("block_size"):
        return None
    try:
        p = graph.qparams(dq)
    except ValueError:
        return None
    raw = np.asarray(raw)
    if raw.dtype.name in ("int4", "uint4"):
        raw = raw.astype(np.int8)
    elif raw.dtype.kind not in "iu":
        return None
    return raw, np.asarray(p.scale, np.float64), p.zero_point, p.axis


def rerounded_weights(graph: QGraph) -> dict[str, Held]:
    """Weighted op name -> its integer weight and parameters, for every weight a rule re-rounds
    from float values: one scale over two or more output channels (``weight-per-channel``), or
    uint8 / nonzero zero points at any granularity (``symmetric-int8``)."""
    out: dict[str, Held] = {}
    names = _unique_names(graph)
    for op in graph.topo_nodes():
        if op.op not in WEIGHTED_OPS or op.name not in names:
            continue
        t = weight_tensor(graph, op)
        dq = graph.producer(t) if t is not None else None
        held = _held_weight(graph, dq) if graph.is_dq(dq) else None
        if held is None:
            continue
        raw, scale, zp, _ = held
        asymmetric = raw.dtype == np.uint8 or (zp is not None and np.any(zp))
        if not asymmetric:
            axis = output_channel_axis(op, raw.ndim)
            if scale.size != 1 or axis is None or raw.ndim < 2 or raw.shape[axis] < 2:
                continue
        out[op.name] = held
    return out


def _unique_names(graph: QGraph) -> set[str]:
    """Node names that name one node: an empty or repeated name identifies nothing."""
    seen: dict[str, int] = {}
    for n in graph.nodes:
        seen[n.name] = seen.get(n.name, 0) + 1
    return {name for name, k in seen.items() if name and k == 1}


def _bn_folded(graph: QGraph, op: Node, w: np.ndarray) -> np.ndarray | None:
    """``w`` with the BatchNormalization that alone reads ``op``'s output folded in."""
    readers = op.outputs[0].outputs if op.outputs else []
    if op.op not in CONV_OPS or len(readers) != 1:
        return None
    bn = readers[0]
    if bn.op != "BatchNormalization" or bn.inputs[0] is not op.outputs[0]:
        return None
    g = bn_scale(bn, np.float64)
    if g is None:
        return None
    axis = output_channel_axis(op, w.ndim)
    if g.size != w.shape[axis]:
        return None
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w * g.reshape(shape)).astype(np.float32)


def _rounds_to(
    w: np.ndarray, q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int | None
) -> bool:
    """``q`` is what quantizing ``w`` with these parameters gives (within ``SLACK`` of a step)."""
    s = np.asarray(scale, np.float64)
    s = s.reshape(axis_shape(q.ndim, axis, s.size))  # per-axis scales: QParams resolved the axis
    back = centered_np(q, zp, axis).astype(np.float64) * s
    return bool(np.all(np.abs(np.asarray(w, np.float64) - back) <= s * (0.5 + SLACK)))


def may_reround_weights(model: onnx.ModelProto) -> bool:
    """A cheap scan of the protobuf: can any rule re-round a weight of ``model``? Some
    DequantizeLinear feeds only weights and either reads a Q of a float constant (the pair form,
    which ``weight-per-channel`` and ``symmetric-int8`` re-round from its own float values) or
    reads an integer constant with a one-element scale over two or more conv output channels (or
    a GEMM), or with uint8 / nonzero zero points (a superset of what ``rerounded_weights``
    returns). Without one, neither float weights nor corrected biases can be used, and the
    reference pre-pass decides so without indexing either model."""
    consts = constant_tensors(model)
    readers: dict[str, list[str]] = {}
    for n in model.graph.node:
        if len(n.input) > 1:
            readers.setdefault(n.input[1], []).append(n.op_type)
    pair_form = {
        n.output[0]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input and n.input[0] in consts
    }
    ints = (
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
    )
    unsigned = (onnx.TensorProto.UINT8, onnx.TensorProto.UINT4)
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 2:
            continue
        ops = set(readers.get(n.output[0], []))
        if not ops or not ops <= WEIGHTED_OPS:
            continue  # not (only) a weight; a weight behind a Transpose is left per tensor
        if n.input[0] in pair_form:
            return True
        w, s = consts.get(n.input[0]), consts.get(n.input[1])
        if w is None or s is None or w.data_type not in ints or len(w.dims) < 2:
            continue
        z = consts.get(n.input[2]) if len(n.input) > 2 else None
        if w.data_type in unsigned or (z is not None and np.any(numpy_helper.to_array(z))):
            return True  # symmetric-int8 re-rounds it
        if int(np.prod(s.dims)) != 1:
            continue
        channels = w.dims[1] if ops == {"ConvTranspose"} else w.dims[0]
        if ops <= CONV_OPS and channels < 2:
            continue  # one output channel: per-tensor is per-channel
        return True
    return False


def reference_ops(
    graph: QGraph, ref: QGraph, names: Iterable[str] | None = None
) -> dict[str, Node]:
    """Weighted op name of ``graph`` (``names``, else every Conv/ConvTranspose/Gemm/MatMul) -> the
    reference's weighted op it was quantized from: the one of the same name, else the one that
    writes the same output tensor, itself or through the BatchNormalization that alone reads its
    output (the producer folded the BN and renamed the node). Names that name one node only, and
    one reference op per op: an ambiguous match is no match."""
    mine, theirs = _unique_names(graph), _unique_names(ref)
    ref_ops = {op.name: op for op in ref.nodes if op.name in theirs and op.op in WEIGHTED_OPS}
    found: dict[str, Node] = {}
    for name in names if names is not None else [n.name for n in graph.nodes]:
        if name not in mine:
            continue
        op = graph.node(name)
        if op.op not in WEIGHTED_OPS:
            continue
        if name in ref_ops:
            found[name] = ref_ops[name]
            continue
        out = op.outputs[0].name if op.outputs else ""
        writer = ref.producer(ref.tensor(out)) if out and ref.has_tensor(out) else None
        if writer is not None and writer.op == "BatchNormalization":
            conv = ref.producer(writer.inputs[0])
            folded = conv is not None and conv.outputs and len(conv.outputs[0].outputs) == 1
            writer = conv if folded else None
        if writer is not None and writer.op == op.op and writer.name in theirs:
            if writer.name not in mine:  # else it is another op of this graph's own
                found[name] = writer
    taken: dict[str, int] = {}
    for r in found.values():
        taken[r.name] = taken.get(r.name, 0) + 1
    return {n: r for n, r in found.items() if taken[r.name] == 1}


def reference_weights(
    model: onnx.ModelProto,
    reference: onnx.ModelProto,
    graphs: tuple[QGraph, QGraph] | None = None,
    ops: dict[str, Node] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """(op name -> float weight of ``reference`` that ``model``'s re-rounded integer weight was
    rounded from; the names of the re-rounded weights no float weight matched).
    ``graphs``: both models already indexed (else they are, when needed); ``ops``: their
    ``reference_ops``, when known."""
    if graphs is None and not may_reround_weights(model):
        return {}, []  # the common case, decided without indexing the graph
    graph, ref = graphs or (QGraph.from_model(model), None)
    wanted = rerounded_weights(graph)
    if not wanted:
        return {}, []
    ref = ref or QGraph.from_model(reference)
    found: dict[str, np.ndarray] = {}
    matched = reference_ops(graph, ref, wanted) if ops is None else ops
    for name, op in ((n, matched[n]) for n in wanted if n in matched):
        if len(op.inputs) < 2:
            continue
        value = constant_value(op.inputs[1])
        if value is None or not is_float_dtype(np.asarray(value).dtype):
            continue
        held = wanted[name]
        w = np.asarray(value, np.float32)
        if w.shape != held[0].shape:
            continue
        for candidate in (w, _bn_folded(ref, op, w)):
            if candidate is not None and _rounds_to(candidate, *held):
                found[name] = candidate
                break
    return found, [name for name in wanted if name not in found]


def _reference_biases(ref: QGraph, op: Node) -> list[np.ndarray]:
    """The bias a float op adds (zeros without one), and with the BatchNormalization or the
    constant Add (a Paddle export's bias) that alone reads its output folded in, as ONNX
    Runtime's pre-processing folds them: the forms a quantizer's own copy of that bias can take."""
    cout = _out_channels(op)
    if cout is None:
        return []
    b = np.zeros(cout, np.float64)
    if len(op.inputs) > 2 and op.inputs[2].name:
        value = constant_value(op.inputs[2])
        if value is None or np.size(value) != cout:
            return []
        b = np.asarray(value, np.float64).reshape(-1)
    forms = [b]
    readers = op.outputs[0].outputs if op.outputs else []
    if len(readers) == 1 and readers[0].op == "Add":
        other = [t for t in readers[0].inputs if t is not op.outputs[0]]
        value = _layout_constant(ref, other[0]) if len(other) == 1 else None
        if value is not None and np.size(value) == cout:
            forms.append(b + np.asarray(value, np.float64).reshape(-1))
    if op.op in CONV_OPS and len(readers) == 1 and readers[0].op == "BatchNormalization":
        bn = readers[0]
        params = [constant_value(t) for t in bn.inputs[1:5]]
        if all(p is not None and np.size(p) == cout for p in params):
            beta, mean = (np.asarray(p, np.float64).reshape(-1) for p in params[1:3])
            forms.append((b - mean) * bn_scale(bn, np.float64).reshape(-1) + beta)
    return forms


def _layout_constant(graph: QGraph, t) -> np.ndarray | None:
    """A constant, or one behind Reshape/Unsqueeze/Identity (a Paddle export's bias)."""
    for _ in range(4):
        value = constant_value(t)
        if value is not None:
            return value
        p = graph.producer(t)
        if p is None or p.op not in ("Reshape", "Unsqueeze", "Identity") or not p.inputs:
            return None
        t = p.inputs[0]
    return None


def _out_channels(op: Node) -> int | None:
    w = constant_value(op.inputs[1]) if len(op.inputs) > 1 else None
    if w is None or np.ndim(w) < 2:
        return None
    axis = output_channel_axis(op, np.ndim(w))
    return None if axis is None else int(np.shape(w)[axis])


BIAS_TOLERANCE = 1e-3  # relative to max(1, |b|): ONNX Runtime's int32 bias rounds far below it


def corrected_biases(graph: QGraph, ref: QGraph, ops: dict[str, Node] | None = None) -> set[str]:
    """Names of the Conv/Gemm ops whose bias in ``graph`` is not the reference model's (plain or
    with its BatchNormalization folded): the producer corrected it for the weights it rounded
    (NNCF's bias correction), so re-rounding those weights must keep the output mean
    (``actions/mean_keep.py``). Unmatched ops are left out: their weights re-round as before."""
    ref_ops = reference_ops(graph, ref) if ops is None else ops
    out: set[str] = set()
    for op in graph.nodes:
        if op.op not in ("Conv", "Gemm") or op.name not in ref_ops:
            continue
        readers = op.outputs[0].outputs if op.outputs else []
        if any(r.op == "BatchNormalization" for r in readers):
            continue  # its bias is partly the BN's (a pytorch-quantization export): no comparison
        forms = _reference_biases(ref, ref_ops[op.name])
        b = float_bias(graph, op, forms[0].size) if forms else None
        if b is None:
            continue
        step = _bias_step(graph, op)  # an int32 bias rounds the float one to this grid
        tol = [
            max(BIAS_TOLERANCE * max(1.0, float(np.abs(f).max(initial=0.0))), 0.51 * step)
            for f in forms
        ]
        if all(np.abs(b - f).max(initial=0.0) > t for f, t in zip(forms, tol, strict=True)):
            out.add(op.name)
    return out


def _bias_step(graph: QGraph, op: Node) -> float:
    """The largest step of an int32 bias DQ (ONNX Runtime rounds the bias to ``s_x s_w``, which
    per-tensor weights make coarse); 0 for a float bias."""
    dq = graph.producer(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2].name else None
    if not graph.is_dq(dq):
        return 0.0
    try:
        return float(np.max(graph.qparams(dq).scale))
    except ValueError:
        return 0.0
