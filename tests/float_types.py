"""Convert a float32 Q/DQ model to fp16 or bf16 the way ModelOpt's fp16 output looks: opset 19,
every float initializer, Constant, graph input/output and Q/DQ scale in the new type.
(onnxconverter-common is not a dependency; this covers the ops the fixtures use.)"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_NP = {TensorProto.FLOAT16: np.float16}


def _cast_tensor(t: onnx.TensorProto, to: int) -> onnx.TensorProto:
    if t.data_type != TensorProto.FLOAT:
        return t
    a = numpy_helper.to_array(t)
    if to == TensorProto.BFLOAT16:
        out = helper.make_tensor(t.name, to, a.shape, a.astype(np.float32).flatten().tolist())
    else:
        out = numpy_helper.from_array(a.astype(_NP[to]), t.name)
    return out


def convert_float_type(model: onnx.ModelProto, to: int = TensorProto.FLOAT16) -> onnx.ModelProto:
    """A copy of ``model`` computing in ``to`` (opset raised to 19, which allows fp16/bf16 scales)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, 19)
    g = m.graph
    # Resize's roi and scales stay float32 in every opset.
    keep = {n.input[i] for n in g.node if n.op_type == "Resize" for i in (1, 2) if len(n.input) > i}
    inits = [t if t.name in keep else _cast_tensor(t, to) for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(inits)
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Constant" and n.output[0] in keep:
                continue
            if a.type == onnx.AttributeProto.TENSOR:
                a.t.CopyFrom(_cast_tensor(a.t, to))
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = to
    for vi in [*g.input, *g.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = to
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(m)
