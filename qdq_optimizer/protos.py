"""Q/DQ parameters and constants decoded from ONNX protobufs: the one module that reads them.

``validate`` checks Q/DQ parameters from here, ``dump`` and ``diff`` show them, ``graph`` decodes
scales and zero points of its constants quickly, and the trainer reads its exported scales.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"
QDQ_OPS = (QUANTIZE, DEQUANTIZE)
# the ONNX float element types (a float model's, a Q/DQ scale's)
FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
)


def payload_dtype(payload: TensorProto | np.ndarray | None) -> int | None:
    """The ONNX element type of a ``constant_payload`` (a TensorProto or a decoded value)."""
    if isinstance(payload, TensorProto):
        return payload.data_type
    return None if payload is None else onnx.helper.np_dtype_to_tensor_dtype(payload.dtype)


def is_float_dtype(dtype: np.dtype) -> bool:
    """A float numpy type, bfloat16 included (ml_dtypes' bfloat16 has kind 'V', not 'f')."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype.name == "bfloat16"


def attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    """An integer attribute of a node (e.g. a Q/DQ's ``axis``, ``block_size``, ``output_dtype``)."""
    return next((a.i for a in node.attribute if a.name == name), default)


def constant_node_payload(node: onnx.NodeProto) -> TensorProto | np.ndarray | None:
    """What a ``Constant`` node holds: its TensorProto (undecoded, so it can be checked first) or
    the value of a scalar/list attribute; None for other forms."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return a.t
        if a.name == "value_float":
            return np.asarray(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.asarray(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.asarray(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.asarray(list(a.ints), dtype=np.int64)
    return None


def constant_tensors(model: onnx.ModelProto) -> dict[str, TensorProto]:
    """Every constant TensorProto by tensor name: the initializers and the tensors ``Constant``
    nodes hold (undecoded: a scan of names, types and dims reads no data)."""
    found = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            payload = constant_node_payload(n)
            if isinstance(payload, TensorProto):
                found[n.output[0]] = payload
    return found


def constant_payload(
    name: str,
    nodes: list[onnx.NodeProto],
    producer: dict[str, int],
    inits: dict[str, TensorProto],
) -> TensorProto | np.ndarray | None:
    """The TensorProto (or value) behind a constant tensor name (an initializer or a ``Constant``
    node's output; ``producer``: output name -> node index), else None."""
    if name in inits:
        return inits[name]
    j = producer.get(name)
    if j is None or nodes[j].op_type != "Constant":
        return None
    return constant_node_payload(nodes[j])


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node as an array (None for forms other than a value)."""
    payload = constant_node_payload(node)
    return numpy_helper.to_array(payload) if isinstance(payload, TensorProto) else payload


def qdq_param_values(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], set[int]]:
    """Values of every Q/DQ scale and zero point that is a constant (initializer or Constant
    node), and the indices of Constant nodes that feed nothing but such parameters: exporters
    differ only in this, so dump and diff show the values inline and hide those nodes."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    param_uses: set[str] = set()
    other_uses: set[str] = {o.name for o in g.output}
    for n in g.node:
        for i, t in enumerate(n.input):
            if n.op_type in QDQ_OPS and i in (1, 2):
                param_uses.add(t)
            else:
                other_uses.add(t)
    values: dict[str, np.ndarray] = {}
    hidden: set[int] = set()
    for idx, n in enumerate(g.node):
        if n.op_type == "Constant" and len(n.output) == 1 and n.output[0] in param_uses:
            value = constant_node_value(n)
            if value is not None:
                values[n.output[0]] = value
                if n.output[0] not in other_uses:
                    hidden.add(idx)
    for name in param_uses:
        if name in inits:
            values[name] = numpy_helper.to_array(inits[name])
    return values, hidden


_RAW_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64,
}


def small_tensor_array(proto: onnx.TensorProto) -> np.ndarray | None:
    """Decode a small in-memory tensor (scales, zero points) without numpy_helper's overhead,
    which dominates rules that read thousands of Q/DQ parameters."""
    dtype = _RAW_DTYPES.get(proto.data_type)
    if dtype is None or proto.data_location == onnx.TensorProto.EXTERNAL or len(proto.dims) > 1:
        return None
    if proto.HasField("raw_data"):
        arr = np.frombuffer(proto.raw_data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    elif proto.data_type == onnx.TensorProto.FLOAT:
        arr = np.asarray(proto.float_data, dtype=np.float32)
    elif proto.data_type == onnx.TensorProto.INT64:
        arr = np.asarray(proto.int64_data, dtype=np.int64)
    else:
        return None  # int8/uint8/int32 in int32_data: leave it to numpy_helper
    size = int(np.prod(proto.dims, dtype=np.int64)) if proto.dims else 1
    if arr.size != size:
        return None
    return arr.reshape(tuple(proto.dims))


def implicit_quant_dtype(
    node: onnx.NodeProto,
    nodes: list[onnx.NodeProto],
    producer: dict[str, int],
    inits: dict[str, TensorProto],
) -> int | None:
    """The quantized type of a Q/DQ without a zero point (Q: uint8 unless output_dtype)."""
    if node.op_type == QUANTIZE:
        out = attr_int(node, "output_dtype", 0)
        return out or TensorProto.UINT8
    src = node.input[0]
    if src in inits:
        return inits[src].data_type
    j = producer.get(src)
    if j is not None and nodes[j].op_type == QUANTIZE:
        q = nodes[j]
        if len(q.input) > 2 and q.input[2]:
            zp = constant_payload(q.input[2], nodes, producer, inits)
            if isinstance(zp, TensorProto):
                return zp.data_type
        return implicit_quant_dtype(q, nodes, producer, inits)
    return None
