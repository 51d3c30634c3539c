"""int4/uint4 weights (ONNX Runtime ``weight_type=QInt4/QUInt4``) under int8 activations.

TensorRT has no W4A8 kernel (its INT4 is weight-only, for float activations), so such a conv
would not run in INT8. ``symmetric-int8`` writes the same values as int8 codes ``q - zp`` on the
same scales: exact, checked here bit for bit under ONNX Runtime. With ``--reference`` the widened
per-tensor weights are then re-quantized per channel from the float model (weight-per-channel).
Before, such a model crashed the export (graph-surgeon wrote the loaded int4 array one byte per
element) with exit 3."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ort_quant import float_cnn, ort_quantize, outputs, photos

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.graph import QGraph
from qdq_optimizer.verify import sqnr

NIBBLE = (TensorProto.INT4, TensorProto.UINT4)


@cache
def calib() -> np.ndarray:
    return photos("calib", 8)


@cache
def w4(weight_type: str, per_channel: bool) -> onnx.ModelProto:
    """Symmetric int8 activations, 4-bit weights (ONNX Runtime writes them as com.microsoft
    Q/DQ below opset 21)."""
    return ort_quantize(
        float_cnn("relu"), "int8-sym", calib(), weight_type=weight_type, per_channel=per_channel
    )


def _weight_dq(model: onnx.ModelProto, conv: str) -> onnx.NodeProto:
    by_out = {o: n for n in model.graph.node for o in n.output}
    w = next(n for n in model.graph.node if n.name == conv).input[1]
    return by_out[w]


def _dequantized(model: onnx.ModelProto, dq: onnx.NodeProto) -> np.ndarray:
    """The DQ's output as ONNX Runtime computes it (a model of that one node)."""
    import onnxruntime as ort

    inits = [t for t in model.graph.initializer if t.name in dq.input]
    out = helper.make_tensor_value_info(dq.output[0], TensorProto.FLOAT, None)
    g = helper.make_graph([dq], "dq", [], [out], inits)
    m = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {})[0]


def _quant_type(model: onnx.ModelProto, dq: onnx.NodeProto) -> int:
    inits = {t.name: t for t in model.graph.initializer}
    return inits[dq.input[0]].data_type


@pytest.mark.parametrize("weight_type", ["QInt4", "QUInt4"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_4bit_weights_become_the_same_int8_values(weight_type: str, per_channel: bool) -> None:
    src = w4(weight_type, per_channel)
    convs = [n.name for n in src.graph.node if n.op_type == "Conv"]
    assert {_quant_type(src, _weight_dq(src, c)) for c in convs} <= set(NIBBLE)  # as produced
    out, report = optimize(src, "tensorrt")
    onnx.checker.check_model(out, full_check=True)
    for c in convs:
        before, after = _weight_dq(src, c), _weight_dq(out, c)
        assert _quant_type(out, after) == TensorProto.INT8
        np.testing.assert_array_equal(_dequantized(out, after), _dequantized(src, before))
    assert lint(out) == []
    assert not any("int4 Q/DQ" in w for w in report.warnings)  # not "passed through untouched"
    x = photos("val", 4)
    ref = outputs(float_cnn("relu"), x)
    assert sqnr(ref, outputs(out, x)) >= sqnr(ref, outputs(src, x)) - 0.5


def test_reference_requantizes_widened_per_tensor_weights_per_channel(tmp_path) -> None:
    """4-bit per-tensor weights keep a few codes per channel; with the float model, the INT8
    TensorRT runs gets per-channel int8 weights (measured: the output moves closer to float)."""
    src = w4("QInt4", False)
    fm = float_cnn("relu")
    ref_path = tmp_path / "float.onnx"
    onnx.save(fm, ref_path)
    plain, _ = optimize(src, "tensorrt")
    better, report = optimize(src, "tensorrt", reference=ref_path)
    x = photos("val", 4)
    ref = outputs(fm, x)
    assert sqnr(ref, outputs(better, x)) > sqnr(ref, outputs(plain, x)) + 3.0
    assert any(r.rule_id == "weight-per-channel" and r.changes for r in report.results)


def _weight_only_int4(opset: int = 21) -> onnx.ModelProto:
    """A float input read by a conv whose weight is int4 (weight-only quantization)."""
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (4, 3, 3, 3)).astype(np.int8)
    w = numpy_helper.from_array(q, "w_q")
    w.data_type, w.raw_data = TensorProto.INT4, _pack_int4(q)
    inits = [w, numpy_helper.from_array(np.float32(0.05), "w_s")]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], "w_dq"),
        helper.make_node("Conv", ["x", "w"], ["y"], "conv", pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(
        nodes,
        "woq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m


def _pack_int4(q: np.ndarray) -> bytes:
    flat = (q.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, 0)
    return (flat[0::2] | (flat[1::2] << 4)).tobytes()


def test_weight_only_int4_stays_int4() -> None:
    """A float data input: weight-only int4 is TensorRT's own INT4 mode, so it is left alone
    (and lint still names it for the INT8 rule set)."""
    m = _weight_only_int4()
    out, _ = optimize(m, "tensorrt")
    dq = _weight_dq(out, "conv")
    assert _quant_type(out, dq) == TensorProto.INT4
    np.testing.assert_array_equal(_dequantized(out, dq), _dequantized(m, _weight_dq(m, "conv")))


def test_loaded_int4_constants_export_packed() -> None:
    """graph-surgeon writes a loaded int4 array one byte per element; the export packs it."""
    m = _weight_only_int4()
    g = QGraph.from_model(m)
    w = next(t for t in g.gs.tensors().values() if t.name == "w_q")
    assert w.values.dtype.name == "int4"  # loaded: no longer the imported TensorProto
    out = g.to_model()
    onnx.checker.check_model(out, full_check=True)
    got = next(t for t in out.graph.initializer if t.name == "w_q")
    assert got.data_type == TensorProto.INT4 and got.raw_data == _pack_int4(
        numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w_q")).astype(
            np.int8
        )
    )
