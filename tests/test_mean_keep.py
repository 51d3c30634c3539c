"""Re-rounded weights keep the op's output mean (``actions/mean_keep.py``).

NNCF's bias correction sets each bias for the weights it rounded; ``weight-per-channel``
re-rounding them per channel moved each output channel's mean by ``dW . E[x]`` (3.4 dB lost on
one 1x1 projection of NNCF's per-tensor-weight LRASPP). With calibration samples the rules now
add ``(W_old - W_new) . E[x]`` to the bias. Here: the shift formula against brute force, and a
bias-corrected per-tensor model like NNCF's, optimized with and without samples."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from ort_quant import outputs, photos

from qdq_optimizer import api
from qdq_optimizer.actions.mean_keep import INPUT_MEANS, output_mean_shift
from qdq_optimizer.api import calibration_pre_pass, float_input_means, optimize
from qdq_optimizer.calibration import CalibrationData, measure_means, measure_ranges_and_means
from qdq_optimizer.graph import QGraph
from qdq_optimizer.verify import sqnr


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_shift_is_the_change_of_a_conv_output_mean(groups: int) -> None:
    rng = np.random.default_rng(groups)
    x = rng.normal(1.0, 0.5, (4, 8, 5, 5)) + np.arange(8)[None, :, None, None]
    w_old = rng.normal(size=(6 * groups // 2 if groups > 1 else 6, 8 // groups, 1, 1))
    w_new = w_old + rng.normal(scale=0.05, size=w_old.shape)
    conv = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="c", group=groups)
    m = helper.make_model(
        helper.make_graph(
            [conv],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.zeros(w_old.shape, np.float32), "w")],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    node = QGraph.from_model(m).node("c")

    def mean_out(w: np.ndarray) -> np.ndarray:  # 1x1, no padding: every output reads all of x
        xs = x.reshape(4, groups, 8 // groups, 25)
        ws = w.reshape(groups, -1, 8 // groups)
        return np.einsum("goc,ngcp->ngop", ws, xs).reshape(4, -1, 25).mean(axis=(0, 2))

    got = output_mean_shift(node, w_old - w_new, x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(got, mean_out(w_old) - mean_out(w_new), rtol=1e-9, atol=1e-12)


def _photo_model(nodes: list, inits: list, name: str) -> onnx.ModelProto:
    """A checked opset-13 model over a photo ``x`` [1, 3, 160, 160] with output ``y`` (8 channels)."""
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 160, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 160, 160])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _nncf_like() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(float, quantized): conv 3x3 -> Relu -> conv 1x1, int8 activations per tensor, int8
    weights per tensor in pair form, and the 1x1 conv's bias corrected for its rounded weights
    the way NNCF's fast bias correction does (b + (W - W_q) . E[x])."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.4, (16, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 16).astype(np.float32)
    # per-tensor weights: a few wide output channels, most narrow (what per-channel fixes)
    w2 = rng.normal(0, 0.15, (8, 16, 1, 1)) * np.r_[4.0, np.full(7, 0.25)][:, None, None, None]
    w2 = w2.astype(np.float32)
    b2 = rng.normal(0, 0.1, 8).astype(np.float32)
    calib = photos("calib")

    def build(b2v: np.ndarray, scales: tuple[float, float] | None = None) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))]
        inits.append(numpy_helper.from_array(b2v.astype(np.float32), "b2"))
        nodes: list = []

        def pair(t: str, s: float) -> str:
            if scales is None:
                return t
            inits.extend(
                [numpy_helper.from_array(np.float32(s), f"{t}_s"),
                 numpy_helper.from_array(np.int8(0), f"{t}_z")]
            )  # fmt: skip
            nodes.append(helper.make_node("QuantizeLinear", [t, f"{t}_s", f"{t}_z"], [f"{t}_q"]))
            nodes.append(
                helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_s", f"{t}_z"], [f"{t}_d"])
            )
            return f"{t}_d"

        xs, rs = scales or (0.0, 0.0)
        x, wa = pair("x", xs), pair("w1", float(np.abs(w1).max() / 127))
        nodes.append(helper.make_node("Conv", [x, wa, "b1"], ["c1"], name="conv1", pads=[1] * 4))
        nodes.append(helper.make_node("Relu", ["c1"], ["r"], name="relu1"))
        r, wb = pair("r", rs), pair("w2", float(np.abs(w2).max() / 127))
        nodes.append(helper.make_node("Conv", [r, wb, "b2"], ["y"], name="conv2"))
        return _photo_model(nodes, inits, "nncf_like")

    fm = build(b2)
    probe = build(b2)
    probe.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    r = np.concatenate([sess.run(["r"], {"x": calib[i : i + 1]})[0] for i in range(len(calib))])
    scales = (1.0 / 127, float(r.max() / 127))
    s2 = float(np.abs(w2).max() / 127)
    w2q = np.clip(np.rint(w2 / s2), -127, 127) * s2
    mu = r.mean(axis=(0, 2, 3))
    corrected = b2 + ((w2 - w2q)[:, :, 0, 0] * mu).sum(1)
    return fm, build(corrected, scales)


@cache
def _models():
    return _nncf_like()


def test_bias_corrected_per_tensor_weights_keep_their_mean_when_re_rounded(tmp_path) -> None:
    fm, qm = _models()
    calib, val = photos("calib"), photos("val")
    ref_path = tmp_path / "float.onnx"
    onnx.save(fm, ref_path)  # shows the producer corrected conv2's bias
    data = CalibrationData({"x": calib})
    kept, report = optimize(qm, "tensorrt", calibration_data=data, reference=ref_path)
    bare, _ = optimize(qm, "tensorrt", reference=ref_path)  # no samples: no means to keep
    wpc = [c for r in report.results if r.rule_id == "weight-per-channel" for c in r.changes]
    assert any("conv2" in c.detail and "keeps the output mean" in c.detail for c in wpc)
    ref, before = outputs(fm, val), outputs(qm, val)

    def mean_error(y: np.ndarray) -> float:
        """Largest mean error against float of the 7 narrow channels (the 8th, wide one kept
        its per-tensor step: re-rounding moves it little)."""
        return float(np.abs((y - ref).mean(axis=(0, 2, 3)))[1:].max())

    y_kept, y_bare = outputs(kept, val), outputs(bare, val)
    assert mean_error(y_kept) < 0.3 * mean_error(y_bare)  # measured .0004 vs .0041
    assert sqnr(ref, y_kept) > sqnr(ref, y_bare) + 1.0  # measured 35.30 vs 32.67 dB
    assert sqnr(ref, y_kept) >= sqnr(ref, before)  # 30.53 dB


def _image_conv() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(float, quantized) first conv of a detector: a 3x3 conv reading the image (per-channel
    mean 0.2-0.4), int8 input pair, per-tensor int8 weights as int8 initializers (ONNX Runtime's
    per_channel=False) whose output channels differ 10x in width, and the float bias as it was
    (uncorrected, ONNX Runtime's way)."""
    rng = np.random.default_rng(11)
    w = rng.normal(0, 0.3, (8, 3, 3, 3)) * np.r_[1.0, np.full(7, 0.1)][:, None, None, None]
    w = w.astype(np.float32)
    b = rng.normal(0, 0.05, 8).astype(np.float32)
    s = np.float32(np.abs(w).max() / 127)
    wq = np.clip(np.rint(w / s), -127, 127).astype(np.int8)

    def build(quantized: bool) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(b, "b")]
        nodes = []
        x, wt = "x", "w"
        if quantized:
            inits += [
                numpy_helper.from_array(np.float32(1 / 127), "xs"),
                numpy_helper.from_array(np.int8(0), "xz"),
                numpy_helper.from_array(wq, "w"),
                numpy_helper.from_array(s, "ws"),
                numpy_helper.from_array(np.int8(0), "wz"),
            ]
            nodes += [
                helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="xq"),
                helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="xdq"),
                helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq"),
            ]
            x, wt = "xd", "wd"
        else:
            inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("Conv", [x, wt, "b"], ["y"], name="conv1", pads=[1] * 4))
        return _photo_model(nodes, inits, "image_conv")

    return build(False), build(True)


def test_an_uncorrected_bias_takes_the_float_models_mean(tmp_path) -> None:
    """Keeping an uncorrected bias's old mean would keep the old rounding's mean error, so the
    bias gets ``(W_f - W_new) . E[x]`` from the float weights the rule re-rounds: the output mean
    becomes the float model's. On an image-reading conv a rounding's sum per output channel
    times the image's mean is an offset of the whole channel (what cost the seed's YOLOv8n-like
    model 0.6 dB when its first conv was re-rounded per channel)."""
    fm, qm = _image_conv()
    ref_path = tmp_path / "float.onnx"
    onnx.save(fm, ref_path)
    val = photos("val")
    data = CalibrationData({"x": photos("calib")})
    moved, report = optimize(qm, "tensorrt", calibration_data=data, reference=ref_path)
    bare, _ = optimize(qm, "tensorrt", reference=ref_path)  # no samples: no means
    (c,) = [c for r in report.results if r.rule_id == "weight-per-channel" for c in r.changes]
    assert "takes the float model's output mean" in c.detail, c.detail
    # against the float weights behind the same input pair: the input's own rounding (a mean
    # error of its own, the same in both) left out, the weights' rounding is what is compared
    ref = outputs(_with_input_pair(fm), val)
    y_moved, y_bare = outputs(moved, val), outputs(bare, val)
    assert _channel_mean_error(y_moved, ref) < 0.3 * _channel_mean_error(y_bare, ref)
    assert sqnr(ref, y_moved) > sqnr(ref, y_bare)


def _with_input_pair(fm: onnx.ModelProto) -> onnx.ModelProto:
    """The float model with the quantized model's int8 pair on its input: float weights behind
    it, so its output differs from the quantized one's by the weight rounding alone."""
    m = onnx.ModelProto()
    m.CopyFrom(fm)
    g = m.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.float32(1 / 127), "xs"),
            numpy_helper.from_array(np.int8(0), "xz"),
        ]
    )
    g.node.insert(0, helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="xdq"))
    g.node.insert(0, helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="xq"))
    next(n for n in g.node if n.name == "conv1").input[0] = "xd"
    onnx.checker.check_model(m, full_check=True)
    return m


def _channel_mean_error(y: np.ndarray, ref: np.ndarray) -> float:
    """RMS over output channels of each channel's mean error."""
    return float(np.sqrt(((y - ref).mean(axis=(0, 2, 3)) ** 2).mean()))


def test_float_weights_quantized_take_the_float_models_mean() -> None:
    """``quantize-float-weights`` rounds a float weight itself: with samples the op's bias takes
    the float op's output mean too."""
    fm, _ = _image_conv()
    m = _with_input_pair(fm)
    val = photos("val")
    moved, report = optimize(
        m, "tensorrt", calibration_data=CalibrationData({"x": photos("calib")})
    )
    bare, _ = optimize(m, "tensorrt")
    (c,) = [c for r in report.results if r.rule_id == "quantize-float-weights" for c in r.changes]
    assert c.nodes == ["conv1"] and "takes the float model's output mean" in c.detail, c.detail
    ref = outputs(m, val)
    y_moved, y_bare = outputs(moved, val), outputs(bare, val)
    # measured .000044 vs .00030: what is left is the held-out images' mean against the
    # calibration images' (0.41 vs 0.38 in red)
    assert _channel_mean_error(y_moved, ref) < 0.3 * _channel_mean_error(y_bare, ref)
    assert sqnr(ref, y_moved) > sqnr(ref, y_bare)


def test_the_corrections_use_the_float_models_input_means() -> None:
    """The corrections aim at the float model's output mean, so they take its input means
    (``api.float_input_means``), not those of the quantized model with quantization off, whose
    coarse weights move every later layer's means: here conv1's per-tensor weights move conv2's
    input means by up to a few percent."""
    fm, qm = _models()
    calib = photos("calib")
    probe = onnx.ModelProto()
    probe.CopyFrom(fm)
    probe.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    r = np.concatenate([sess.run(["r"], {"x": calib[i : i + 1]})[0] for i in range(len(calib))])
    got = float_input_means(fm, CalibrationData({"x": calib}))
    np.testing.assert_allclose(got["conv2"], r.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["conv1"], calib.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-7)
    own = calibration_pre_pass(qm, CalibrationData({"x": calib}))[INPUT_MEANS]["conv2"]
    assert not np.allclose(own, got["conv2"], rtol=1e-3)  # what the quantized weights give


def test_float_means_are_measured_alone_and_only_when_a_weight_can_be_rounded(
    tmp_path, monkeypatch
) -> None:
    """``measure_means`` fetches only the tensors it averages and gives the pre-pass's means; and
    the float model is not run when no rule can round a weight (per-channel int8 weights, no
    float constant: nothing would read the means)."""
    fm, qm = _models()
    data = CalibrationData({"x": photos("calib")})
    inputs = {"c1", "r"}
    alone = measure_means(fm, data, inputs)
    with_ranges = measure_ranges_and_means(fm, data, inputs)[1]
    assert alone.keys() == with_ranges.keys() == inputs
    for t in inputs:
        np.testing.assert_array_equal(alone[t], with_ranges[t])

    per_channel, _ = optimize(qm, "tensorrt")  # int8 weight initializers, per output channel
    assert not any(
        t.data_type == TensorProto.FLOAT and len(t.dims) >= 2 for t in per_channel.graph.initializer
    )
    ref_path = tmp_path / "float.onnx"
    onnx.save(fm, ref_path)

    def never(*_args):
        raise AssertionError("the float model was run")

    monkeypatch.setattr(api, "float_input_means", never)
    optimize(per_channel, "tensorrt", calibration_data=data, reference=ref_path)
    with pytest.raises(AssertionError, match="float model was run"):
        optimize(qm, "tensorrt", calibration_data=data, reference=ref_path)  # pair-form weights
