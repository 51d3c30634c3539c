"""symmetric-int8: uint8, asymmetric int8 and per-channel activations become symmetric int8; the
clamp an ORT-deleted Relu/Clip left in the range comes back first; weights are re-quantized.

Measured, not asserted from constants: small conv + Relu / HardSwish / ReLU6 CNNs quantized by ONNX
Runtime's quantize_static (uint8, uint8 per-channel, its int8 asymmetric default) on the
calibration photographs, scored on the held-out ones against the float model, next to ORT's own
symmetric int8 quantization of the same model."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ort_quant import ACTS, float_cnn, ort_quantize, outputs, photos

import qdq_optimizer.asymmetric as asym
from qdq_optimizer.api import lint, optimize
from qdq_optimizer.calibration import bypass_activation_qdq
from qdq_optimizer.verify import sqnr

MODES = ("uint8", "uint8-pc", "int8-asym")
CLAMPING = ("Relu", "Clip", "HardSwish")


@cache
def calib() -> np.ndarray:
    return photos("calib")


@cache
def val() -> np.ndarray:
    return photos("val", 6)


@cache
def reference(act: str) -> np.ndarray:
    return outputs(float_cnn(act), val())


@cache
def quantized(act: str, mode: str) -> onnx.ModelProto:
    return ort_quantize(float_cnn(act), mode, calib())


@cache
def optimized(act: str, mode: str) -> tuple[onnx.ModelProto, object]:
    return optimize(quantized(act, mode), "tensorrt")


def _qparams(model: onnx.ModelProto):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits.get(n.input[2]) if len(n.input) > 2 else None
            yield n, inits[n.input[1]], zp


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ACTS)
def test_output_is_symmetric_int8_and_keeps_every_clamp(act, mode):
    out, report = optimized(act, mode)
    for n, scale, zp in _qparams(out):
        if zp is not None and zp.dtype == np.int32:
            continue  # an int32 bias DQ (float-bias converts the conv's)
        assert zp is None or (zp.dtype == np.int8 and not np.any(zp)), n.name
        if n.input[0] not in {t.name for t in out.graph.initializer}:
            assert scale.size == 1, f"activation {n.name} is still per-channel"
    f = float_cnn(act)
    want = sum(n.op_type in CLAMPING for n in f.graph.node)
    assert sum(n.op_type in CLAMPING for n in out.graph.node) >= want  # never a clamp lost
    assert any(w.startswith("symmetric-int8:") for w in report.warnings)
    assert not lint(out, "tensorrt")  # lint-clean, the converted pairs included


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ACTS)
def test_fidelity_close_to_ort_symmetric_int8(act, mode):
    """The converted graph is about as good as ORT's own symmetric int8 of the same model."""
    ours = sqnr(reference(act), outputs(optimized(act, mode)[0], val()))
    ort_sym = sqnr(reference(act), outputs(quantized(act, "int8-sym"), val()))
    assert ours > ort_sym - 0.75, (ours, ort_sym)


@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_the_re_inserted_clamp_is_what_keeps_the_activation(act, monkeypatch):
    """Without the Clip the ORT-deleted Relu/ReLU6 is gone: the output falls apart."""
    with_clamp = sqnr(reference(act), outputs(optimized(act, "uint8")[0], val()))
    monkeypatch.setattr(asym, "clamp_needed", lambda clamp, op: False)
    without, _ = optimize(quantized(act, "uint8"), "tensorrt")
    lost = sqnr(reference(act), outputs(without, val()))
    assert with_clamp > lost + 10, (with_clamp, lost)


def test_quantization_off_keeps_the_deleted_clamps(monkeypatch):
    """Calibration's reference (activation Q/DQ bypassed) still applies the ORT-deleted ReLU6."""
    q = quantized("relu6", "uint8")
    kept = sqnr(reference("relu6"), outputs(bypass_activation_qdq(q), val()))
    monkeypatch.setattr(asym, "materialize_implied_clamps", lambda model: 0)
    dropped = sqnr(reference("relu6"), outputs(bypass_activation_qdq(q), val()))
    assert kept > dropped + 10, (kept, dropped)


def test_lint_reports_then_second_run_is_a_fixpoint():
    q = quantized("relu", "uint8")
    problems = [p for p in lint(q, "tensorrt") if p.rule_id == "symmetric-int8"]
    assert problems
    out, _ = optimized("relu", "uint8")
    _, again = optimize(out, "tensorrt")
    assert not any(r.changes for r in again.results if r.rule_id == "symmetric-int8")


def test_implied_clamp_from_ranges():
    u8 = TensorProto.UINT8
    r = asym.represented_range(np.float32(6 / 255), np.uint8(0), u8)
    assert asym.implied_clamp(r) == (0.0, pytest.approx(6.0))
    r = asym.represented_range(np.float32(0.1), np.int8(-128), TensorProto.INT8)
    assert asym.implied_clamp(r) == (0.0, pytest.approx(25.5))
    r = asym.represented_range(np.float32(0.1), np.uint8(3), u8)  # lo = -0.3: calibration min
    assert asym.implied_clamp(r) == (None, None)
    assert not asym.clamp_needed((0.0, 6.0), "Relu")
    assert asym.clamp_needed((0.0, 6.0), "Conv")
    assert asym.target_scale(np.float32([0.1, 0.3]), np.int8([0, 0]), TensorProto.INT8) == (
        pytest.approx(0.3)
    )


def _per_channel_activation_model() -> onnx.ModelProto:
    """NNCF-style: an int8 symmetric per-channel activation Q/DQ before a conv."""
    w = np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32)
    s_ch = np.float32([0.01, 0.02, 0.04])
    inits = [
        numpy_helper.from_array(s_ch, "s"),
        numpy_helper.from_array(np.zeros(3, np.int8), "z"),
        numpy_helper.from_array(w, "w"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="xq", axis=1),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="xd", axis=1),
        helper.make_node("Conv", ["xd", "w"], ["y"], name="conv"),
    ]
    g = helper.make_graph(
        nodes,
        "pc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_per_channel_activation_becomes_per_tensor_max():
    out, _ = optimize(_per_channel_activation_model(), "tensorrt")
    scales = {n.name: s for n, s, _ in _qparams(out) if n.input[0] not in {"w"} and s.size == 1}
    assert scales and all(np.isclose(s, 0.04) for s in scales.values())
    assert not any(
        a.name == "axis" for n, s, _ in _qparams(out) if s.size == 1 for a in n.attribute
    )


def _chain(head: str) -> onnx.ModelProto:
    """x -> Conv -> [Sigmoid -> Mul(2)] -> Q/DQ(uint8, zp 0) -> y: the zero range edge is a
    deleted Relu after a Conv, but no clamp at all after a non-negative head."""
    w = np.random.default_rng(0).standard_normal((2, 2, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.float32(2), "two"),
        numpy_helper.from_array(np.float32(0.02), "s"),
        numpy_helper.from_array(np.uint8(0), "z"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
    t = "c"
    if head == "sigmoid":
        nodes += [
            helper.make_node("Sigmoid", ["c"], ["sg"], name="sig"),
            helper.make_node("Mul", ["sg", "two"], ["m"], name="mul"),
        ]
        t = "m"
    nodes += [
        helper.make_node("QuantizeLinear", [t, "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq"),
        helper.make_node("Conv", ["d", "w"], ["y"], name="conv2"),
    ]
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("head,clips", [("conv", 1), ("sigmoid", 0)])
def test_clamp_only_where_the_tensor_could_be_negative(head, clips):
    out, report = optimize(_chain(head), "tensorrt")
    assert sum(n.op_type == "Clip" for n in out.graph.node) == clips
    assert report.result("symmetric-int8").count == 1


def test_ort_uint8_yolo_fixture_converts_lint_clean_and_keeps_fidelity():
    """ORT uint8 / symmetric int8 of the YOLOv8-style fixture, on real photographs."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType

    from qdq_optimizer.verify import sqnr as _sqnr

    path = str(Path(__file__).resolve().parents[1] / "fixtures/models/yolov8ish-float.onnx")
    cal, x = calib()[:6], photos("val", 4)

    def quantize(**kw) -> onnx.ModelProto:
        import tempfile

        from onnxruntime.quantization import quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter([{"images": cal[i : i + 1]} for i in range(len(cal))])

            def get_next(self):
                return next(self.it, None)

        with tempfile.TemporaryDirectory() as d:
            quantize_static(path, f"{d}/q.onnx", Reader(), quant_format=QuantFormat.QDQ, **kw)
            return onnx.load(f"{d}/q.onnx")

    def run(m) -> np.ndarray:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        src = m if isinstance(m, str) else m.SerializeToString()
        s = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {"images": x[i : i + 1]})[0] for i in range(len(x))])

    ref = run(path)
    u8 = quantize(activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    sym = quantize(per_channel=True, extra_options={"ActivationSymmetric": True})
    out, _ = optimize(u8, "yolov8")
    assert not lint(out, "yolov8")
    got, before, ort_sym = _sqnr(ref, run(out)), _sqnr(ref, run(u8)), _sqnr(ref, run(sym))
    assert got > min(before, ort_sym) - 0.5, (got, before, ort_sym)


@pytest.mark.parametrize("head,clips", [("conv", 1), ("sigmoid", 0)])
def test_quantization_off_clamps_follow_the_same_rule(head, clips):
    m = _chain(head)
    assert asym.materialize_implied_clamps(m) == clips
    onnx.checker.check_model(m, full_check=True)


def test_weights_of_ignored_ops_are_not_requantized():
    """keep-ignored-float makes an ignored conv's weights float from the producer's own values."""
    q = quantized("relu", "uint8")
    out, report = optimize(q, "tensorrt", ignore=["^conv3$"])
    changed = {n for c in report.result("symmetric-int8").changes for n in c.nodes}
    assert not any(n.startswith("w3") for n in changed)
    assert any(n.startswith("w0") for n in changed)
    plain = {
        n for c in optimized("relu", "uint8")[1].result("symmetric-int8").changes for n in c.nodes
    }
    assert any(n.startswith("w3") for n in plain)  # converted when not ignored
