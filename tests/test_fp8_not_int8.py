"""An FP8 Q/DQ is not INT8: the INT8 rules leave what it feeds alone, and an FP8 model is refused.

Found by the held-out re-measurement: ModelOpt's `--quantize_mode fp8` YOLOv8n has four convs
with float weights behind an FP8 (E4M3) activation pair; quantize-float-weights took the pair for
an INT8 input and gave those weights int8, a mixed FP8-activation/INT8-weight conv TensorRT cannot
fuse, and the output SQNR fell 35.50 -> 34.06 dB. Its lint then reported every FP8 pair as a wrong
type, though TensorRT runs FP8: validation now refuses FP8 models in one line (the rules and lint
are INT8's), and the commute predicate still never takes an FP8 DQ for INT8."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from qdq_optimizer.api import optimize
from qdq_optimizer.commute import is_int8_tensor
from qdq_optimizer.errors import InputError
from tests.rules_util import G, qgraph


def _model(fp8: bool) -> onnx.ModelProto:
    g = G(c=3, hw=4, seed=1)
    y = g.conv(g.q("x", 0.05, "a"), form="float", name="conv")
    m = g.model([y], opset=19)
    if fp8:
        for n in m.graph.node:
            if n.name in ("a_Q", "a_DQ"):
                zp = next(t for t in m.graph.initializer if t.name == n.input[2])
                zp.CopyFrom(helper.make_tensor(zp.name, TensorProto.FLOAT8E4M3FN, [], [0]))
    del m.graph.value_info[:]  # inferred with the int8 type
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


def _weight_is_float(model: onnx.ModelProto) -> bool:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    inits = {t.name for t in model.graph.initializer}
    return conv.input[1] in inits


def test_fp8_input_is_not_int8() -> None:
    g = qgraph(_model(fp8=True))
    conv = next(n for n in g.nodes if n.op == "Conv")
    assert not is_int8_tensor(g, conv.inputs[0])
    g = qgraph(_model(fp8=False))
    conv = next(n for n in g.nodes if n.op == "Conv")
    assert is_int8_tensor(g, conv.inputs[0])


def test_fp8_model_is_refused_and_int8_weights_only_behind_int8() -> None:
    """An FP8 model is refused in one line (validation); behind an int8 pair the float weights
    get int8 (the rule itself works)."""
    with pytest.raises(InputError, match="FP8"):
        optimize(_model(fp8=True), "tensorrt")
    out, rep = optimize(_model(fp8=False), "tensorrt")
    assert not _weight_is_float(out)
    assert rep.result("quantize-float-weights").count == 1
