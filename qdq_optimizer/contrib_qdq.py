"""ONNX Runtime's contrib Q/DQ moved to the default ONNX domain before anything reads the model.

``quantize_static(extra_options={"UseQDQContribOps": True})``, and ONNX Runtime's 16- and 4-bit
path below opset 21, write ``com.microsoft`` QuantizeLinear/DequantizeLinear: the ONNX operators
under another domain (same inputs, ``axis`` attribute and rounding). Left there, the rules
rewrite them but keep the domain, and validation skips them, so an int16 contrib pair got past
the refusal a default-domain one gets. Each one whose types the model's default opset has moves
to the default domain (exact: the same operator), so validation, every rule and lint read one
spelling, and the output is the form TensorRT's documentation describes. The others stay, and
validation checks them as Q/DQ like any other (int16 refused, int4 passed through).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from .opset_upgrade import default_opset
from .protos import DEQUANTIZE, QDQ_OPS, constant_payload, implicit_quant_dtype, payload_dtype

CONTRIB_DOMAIN = "com.microsoft"

# quantized and scale types of the default-domain Q/DQ, by the opset that added them
_QUANT_TYPES = {
    13: {TensorProto.INT8, TensorProto.UINT8},
    19: {
        TensorProto.FLOAT8E4M3FN,
        TensorProto.FLOAT8E4M3FNUZ,
        TensorProto.FLOAT8E5M2,
        TensorProto.FLOAT8E5M2FNUZ,
    },
    21: {TensorProto.INT16, TensorProto.UINT16, TensorProto.INT4, TensorProto.UINT4},
}
_SCALE_TYPES = {13: {TensorProto.FLOAT}, 19: {TensorProto.FLOAT16, TensorProto.BFLOAT16}}


def _since(table: dict[int, set[int]], opset: int) -> set[int]:
    return set().union(*(types for since, types in table.items() if opset >= since))


def is_contrib_qdq(node: onnx.NodeProto) -> bool:
    return node.domain == CONTRIB_DOMAIN and node.op_type in QDQ_OPS


def to_default_domain(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """(model with its movable contrib Q/DQ in the default domain, a note or None). The model
    is edited in place (callers pass their own copy); one pass over the nodes."""
    contrib = [n for n in model.graph.node if is_contrib_qdq(n)]
    opset = default_opset(model)
    if not contrib or opset is None:
        return model, None
    nodes = list(model.graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    inits = {t.name: t for t in model.graph.initializer}
    quant_types, scale_types = _since(_QUANT_TYPES, opset), _since(_SCALE_TYPES, opset)
    moved = 0
    for node in contrib:
        qtype = _quant_type(node, nodes, producer, inits)
        allowed = quant_types | ({TensorProto.INT32} if node.op_type == DEQUANTIZE else set())
        scale = (
            _payload_type(node.input[1], nodes, producer, inits) if len(node.input) > 1 else None
        )
        if qtype in allowed and scale in scale_types:
            node.domain = ""
            moved += 1
    if not moved:
        return model, None
    left = len(contrib) - moved
    note = (
        f"{moved} ONNX Runtime contrib (com.microsoft) Q/DQ node(s) moved to the default "
        "domain (the same operator)"
        + (f"; {left} with types opset {opset} lacks stay there" if left else "")
    )
    return model, note


def _payload_type(name: str, nodes, producer, inits) -> int | None:
    """The element type of a constant (initializer or Constant node), else None."""
    return payload_dtype(constant_payload(name, nodes, producer, inits))


def _quant_type(node: onnx.NodeProto, nodes, producer, inits) -> int | None:
    if len(node.input) > 2 and node.input[2]:
        return _payload_type(node.input[2], nodes, producer, inits)
    return implicit_quant_dtype(node, nodes, producer, inits)
