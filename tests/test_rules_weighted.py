"""Rule 4: weights become int8 initializers (bit-exact), int32 biases float, output Q/DQ that
nothing INT8 reads goes, and weighted-op inputs stay quantized."""

from __future__ import annotations

import re

import numpy as np
from onnx import numpy_helper

from qdq_optimizer.api import optimize
from qdq_optimizer.testing.graphgen import FloatBuilder, naive_qdq, ort_qdq
from tests.rules_util import G, count, outputs


def test_weight_q_folds_into_int8_initializer_bit_exact() -> None:
    m = naive_qdq(FloatBuilder(seed=2).build(["elan", "conv"], ["relu", "leaky"]), seed=2)
    out, rep = optimize(m, "tensorrt")
    n_conv = count(m, "Conv")
    assert rep.result("weight-int8").count == n_conv
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    prod = {o: n for n in out.graph.node for o in n.output}
    for conv in (n for n in out.graph.node if n.op_type == "Conv"):
        dq = prod[conv.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
    feeds = {"images": np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)}
    # only placement-neutral rules changed this graph's weights: outputs differ only by scale groups
    keep, _ = optimize(m, "tensorrt", keep_weight_q=True)
    assert count(keep, "QuantizeLinear") == count(out, "QuantizeLinear") + n_conv
    np.testing.assert_array_equal(outputs(keep, feeds)[0], outputs(out, feeds)[0])

    def weight_bytes(model) -> int:
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        prod = {o: n for n in model.graph.node for o in n.output}
        total = 0
        for conv in (n for n in model.graph.node if n.op_type == "Conv"):
            src = prod[conv.input[1]].input[0]
            src = src if src in inits else prod[src].input[0]
            total += inits[src].nbytes
        return total

    assert weight_bytes(out) * 4 == weight_bytes(keep)


def test_int32_bias_becomes_float_bit_exact() -> None:
    m = ort_qdq(FloatBuilder(seed=4).build(["conv"], ["relu"], head=False), seed=4)
    assert any(numpy_helper.to_array(t).dtype == np.int32 for t in m.graph.initializer)
    from qdq_optimizer.ruleset import load_ruleset

    rs = load_ruleset("tensorrt")
    rs.rules = [r for r in rs.rules if r.id == "float-bias"]
    out, rep = optimize(m, rs)
    assert rep.result("float-bias").count == count(m, "Conv")
    assert not any(numpy_helper.to_array(t).dtype == np.int32 for t in out.graph.initializer)
    np.testing.assert_array_equal(outputs(out)[0], outputs(m)[0])


def test_output_qdq_read_only_in_float_goes_and_inputs_stay_quantized() -> None:
    g = G()
    y = g.conv(g.q("x", 0.05), name="conv")
    y = g.q(y, 0.1, "convout")
    y = g.op("Softmax", [y], axis=1)
    z = g.conv(g.q(g.op("Relu", ["x"]), 0.05), name="conv2")
    z = g.conv(g.q(z, 0.1, "keep"), name="conv3")  # INT8 consumer: the pair stays
    out, rep = optimize(g.model([y, z]), "tensorrt")
    names = {n.name for n in out.graph.node}
    assert "convout_Q" not in names and "keep_Q" in names
    prod = {o: n for n in out.graph.node for o in n.output}
    for conv in (n for n in out.graph.node if n.op_type == "Conv"):
        assert prod[conv.input[0]].op_type == "DequantizeLinear"
        assert prod[conv.input[1]].op_type == "DequantizeLinear"
    assert rep.result("weighted-output-qdq").count == 1


def test_keep_weight_q_from_rule_params() -> None:
    m = naive_qdq(FloatBuilder(seed=5).build(["conv"], ["relu"]), seed=5)
    out, rep = optimize(m, "tensorrt", settings={"keep_weight_q": True})
    assert rep.result("weight-int8").count == 0
    assert count(out, "QuantizeLinear") == count(m, "QuantizeLinear")  # weight Qs kept


# ------------------------------------------------------------ weight forms (issue 10, item 7)
def _weighted_graph(
    op: str, w: np.ndarray, scale: np.ndarray | None, axis: int, form: str = "int8"
):
    """x -> Q/DQ -> op(W) -> y, W as an int8 DQ, a Q/DQ pair over float W, or float W."""
    from onnx import TensorProto, helper

    inits = [
        numpy_helper.from_array(np.float32(0.05), "xs"),
        numpy_helper.from_array(np.int8(0), "xz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="xq"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="xd"),
    ]
    if form == "float":
        inits.append(numpy_helper.from_array(w, "w"))
        wname = "w"
    else:
        inits += [
            numpy_helper.from_array(scale.astype(np.float32), "ws"),
            numpy_helper.from_array(np.zeros(scale.shape, np.int8), "wz"),
        ]
        if form == "pair":
            inits.append(numpy_helper.from_array(w, "w"))
            nodes.append(
                helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="wQ", axis=axis)
            )
            src = "wq"
        else:
            sh = [1] * w.ndim
            sh[axis] = -1
            s = np.where(scale > 0, scale, 1).reshape(sh)
            inits.append(
                numpy_helper.from_array(np.clip(np.rint(w / s), -127, 127).astype(np.int8), "w")
            )
            src = "w"
        nodes.append(
            helper.make_node("DequantizeLinear", [src, "ws", "wz"], ["wd"], name="wDQ", axis=axis)
        )
        wname = "wd"
    cin = w.shape[0] if op == "ConvTranspose" else w.shape[1]
    nodes.append(helper.make_node(op, ["xd", wname], ["y"], name="op"))
    g = helper.make_graph(
        nodes,
        "w",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _raw(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _x(c: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, c, 4, 4)).astype(np.float32)


def test_zero_scale_on_all_zero_channel_is_accepted_and_fixed_exactly() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.2).astype(np.float32)
    w[2] = 0  # a pruned filter: max|w| / 127 = 0
    scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    assert scale[2] == 0
    m = _weighted_graph("Conv", w, scale, 0)
    out, rep = optimize(m, "cleanup")
    assert rep.result("zero-scale-channels").count == 1
    s = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    dq = next(n for n in out.graph.node if n.name == "wDQ")
    assert np.all(s[dq.input[1]] > 0)
    np.testing.assert_array_equal(_raw(m, _x(3)), _raw(out, _x(3)))
    trt, _ = optimize(m, "tensorrt")  # the TensorRT set runs on it too
    np.testing.assert_array_equal(_raw(m, _x(3)), _raw(trt, _x(3)))


def test_zero_scale_on_a_non_zero_channel_is_still_refused() -> None:
    import pytest

    from qdq_optimizer.errors import InputError

    w = np.ones((4, 3, 1, 1), np.float32)
    scale = np.float32([0.01, 0.01, 0.0, 0.01])
    with pytest.raises(InputError, match="zero or negative"):
        optimize(_weighted_graph("Conv", w, scale, 0), "cleanup")


def _ct_weight(cin: int = 4, cout: int = 6) -> np.ndarray:
    rng = np.random.default_rng(3)
    # output channels with very different magnitudes: axis-0 scales fit them badly
    return (
        rng.standard_normal((cin, cout, 2, 2)) * np.geomspace(0.01, 1, cout)[None, :, None, None]
    ).astype(np.float32)


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - x) ** 2)))


def test_convtranspose_axis0_weights_requantized_on_axis1_from_float() -> None:
    w = _ct_weight()
    s0 = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    m = _weighted_graph("ConvTranspose", w, s0, 0, form="pair")
    out, rep = optimize(m, "tensorrt")
    assert rep.result("convtranspose-weight-axis").count == 1
    dq = next(
        n
        for n in out.graph.node
        if n.op_type == "DequantizeLinear"
        and n.output[0]
        in {i for c in out.graph.node if c.op_type == "ConvTranspose" for i in c.input[1:2]}
    )
    assert {a.name: a.i for a in dq.attribute}["axis"] == 1
    ref = _raw(_weighted_graph("ConvTranspose", w, None, 0, form="float"), _x(4))
    before, after = _sqnr(ref, _raw(m, _x(4))), _sqnr(ref, _raw(out, _x(4)))
    assert after > before + 3, (before, after)  # measured: per-output-channel fits the weights


def test_float_weight_conv_with_int8_input_gets_int8_per_channel_weights() -> None:
    w = (np.random.default_rng(5).standard_normal((6, 4, 3, 3)) * 0.2).astype(np.float32)
    m = _weighted_graph("Conv", w, None, 0, form="float")
    out, rep = optimize(m, "tensorrt")
    assert rep.result("quantize-float-weights").count == 1
    assert any("quantize-float-weights" in x for x in rep.warnings)
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    prod = {o: n for n in out.graph.node for o in n.output}
    dq = prod[conv.input[1]]
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
    assert inits[dq.input[1]].shape == (6,)
    ref = _raw(m, _x(4))
    assert _sqnr(ref, _raw(out, _x(4))) > 30  # measured rounding of max/127 per channel
    again, rep2 = optimize(out, "tensorrt")
    assert rep2.result("quantize-float-weights").count == 0


def test_float_weight_conv_on_the_ignore_list_stays_float() -> None:
    w = (np.random.default_rng(5).standard_normal((6, 4, 3, 3)) * 0.2).astype(np.float32)
    out, rep = optimize(
        _weighted_graph("Conv", w, None, 0, form="float"), "tensorrt", ignore=["^op$"]
    )
    assert rep.result("quantize-float-weights").count == 0


def test_float_weight_warning_names_the_ignore_that_keeps_it_float() -> None:
    # A producer's exclusion (ORT nodes_to_exclude, NNCF IgnoredScope, ModelOpt
    # --nodes_to_exclude) leaves such a conv float on purpose: the warning says how to keep it so,
    # and following it does (its input pair goes too: keep-ignored-float).
    w = (np.random.default_rng(6).standard_normal((6, 4, 3, 3)) * 0.2).astype(np.float32)
    m = _weighted_graph("Conv", w, None, 0, form="float")
    _, rep = optimize(m, "tensorrt")
    (text,) = [x for x in rep.warnings if x.startswith("quantize-float-weights")]
    pattern = re.search(r"--ignore '([^']+)'", text).group(1)
    out, rep = optimize(m, "tensorrt", ignore=[pattern])
    assert rep.result("quantize-float-weights").count == 0
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in out.graph.node)
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(inits[conv.input[1]], w)  # the float weight, untouched


def _per_tensor(w: np.ndarray) -> np.ndarray:
    return np.float32(np.abs(w).max() / 127)


def _weight_dq(model):
    op = next(n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose"))
    prod = {o: n for n in model.graph.node for o in n.output}
    return prod[op.input[1]]


def test_per_tensor_float_weights_requantized_per_output_channel() -> None:
    # ModelOpt's default on a Paddle export: per-tensor Q/DQ over float weights whose output
    # channels differ 100x in magnitude, so the narrow channels keep a few of the 127 codes.
    w = np.moveaxis(_ct_weight(cin=4, cout=6), 1, 0).copy()  # Conv [Cout=6, Cin=4, 2, 2]
    m = _weighted_graph("Conv", w, _per_tensor(w), 0, form="pair")
    out, rep = optimize(m, "tensorrt")
    res = rep.result("weight-per-channel")
    assert res.count == 1
    detail = res.changes[0].detail
    assert "per-tensor -> per-channel (axis 0" in detail and "not exact" in detail
    assert "of 6 output channels used under 64" in detail
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    dq = _weight_dq(out)
    assert inits[dq.input[1]].shape == (6,) and inits[dq.input[0]].dtype == np.int8
    np.testing.assert_allclose(inits[dq.input[1]], np.abs(w).reshape(6, -1).max(1) / 127, rtol=1e-6)
    ref = _raw(_weighted_graph("Conv", w, None, 0, form="float"), _x(4))
    before, after = _sqnr(ref, _raw(m, _x(4))), _sqnr(ref, _raw(out, _x(4)))
    assert after > before + 6, (before, after)  # measured: the narrow channels had ~1-25 codes
    _, again = optimize(out, "tensorrt")  # idempotent: per-channel now
    assert again.result("weight-per-channel").count == 0


def test_per_tensor_convtranspose_weights_go_per_channel_on_axis_1() -> None:
    w = _ct_weight()
    out, rep = optimize(
        _weighted_graph("ConvTranspose", w, _per_tensor(w), 0, form="pair"), "tensorrt"
    )
    assert rep.result("weight-per-channel").count == 1
    dq = _weight_dq(out)
    assert {a.name: a.i for a in dq.attribute}["axis"] == 1
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits[dq.input[1]].shape == (6,)


def test_per_tensor_weights_left_alone_when_no_channel_gains_or_ignored_or_int8() -> None:
    w = np.random.default_rng(1).uniform(-1, 1, (6, 4, 2, 2)).astype(np.float32)
    w[:, 0, 0, 0] = 1.5  # every output channel reaches the tensor's max: one scale fits all
    _, rep = optimize(_weighted_graph("Conv", w, _per_tensor(w), 0, form="pair"), "tensorrt")
    assert rep.result("weight-per-channel").count == 0
    narrow = np.moveaxis(_ct_weight(cin=4, cout=6), 1, 0).copy()
    pair = _weighted_graph("Conv", narrow, _per_tensor(narrow), 0, form="pair")
    _, rep = optimize(pair, "tensorrt", ignore=["^op$"])
    assert rep.result("weight-per-channel").count == 0
    # int8 initializers: no float values left to re-quantize from (lint warns instead)
    _, rep = optimize(_weighted_graph("Conv", narrow, _per_tensor(narrow), 0), "tensorrt")
    assert rep.result("weight-per-channel").count == 0


def _narrow_conv_weight() -> np.ndarray:
    return np.moveaxis(_ct_weight(cin=4, cout=6), 1, 0).copy()  # Conv [6, 4, 2, 2]


def test_int8_per_tensor_weights_requantized_from_the_reference_float_weights() -> None:
    # ONNX Runtime's per_channel=False default: int8 initializers, no float values in the graph.
    w = _narrow_conv_weight()
    m = _weighted_graph("Conv", w, _per_tensor(w), 0)
    float_model = _weighted_graph("Conv", w, None, 0, form="float")
    alone, rep = optimize(m, "tensorrt")  # without the float model: nothing to re-quantize from
    assert rep.result("weight-per-channel").count == 0
    out, rep = optimize(m, "tensorrt", reference=float_model)
    res = rep.result("weight-per-channel")
    assert res.count == 1 and "from the reference model's float weight" in res.changes[0].detail
    dq = _weight_dq(out)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits[dq.input[1]].shape == (6,)
    ref = _raw(float_model, _x(4))
    before, after = _sqnr(ref, _raw(alone, _x(4))), _sqnr(ref, _raw(out, _x(4)))
    assert after > before + 6, (before, after)
    assert not any("--reference" in x for x in rep.warnings)
    _, again = optimize(out, "tensorrt", reference=float_model)  # idempotent
    assert again.result("weight-per-channel").count == 0


def _conv_bn_float(w: np.ndarray, gamma: np.ndarray, var: np.ndarray):
    from onnx import TensorProto, helper

    c = w.shape[0]
    inits = [numpy_helper.from_array(w, "w")] + [
        numpy_helper.from_array(v.astype(np.float32), n)
        for n, v in (("g", gamma), ("b", np.zeros(c)), ("m", np.zeros(c)), ("v", var))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="op"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
    ]
    g = helper.make_graph(
        nodes,
        "f",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1], 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_reference_weights_match_a_bn_folded_conv_and_refuse_a_stranger() -> None:
    # ONNX Runtime's pre-processing folds BN before quantizing; the user's float model has it.
    w = _narrow_conv_weight()
    gamma, var = np.linspace(0.5, 2, 6), np.linspace(0.1, 3, 6)
    folded = (w * (gamma / np.sqrt(var + 1e-5)).reshape(6, 1, 1, 1)).astype(np.float32)
    m = _weighted_graph("Conv", folded, _per_tensor(folded), 0)
    _, rep = optimize(m, "tensorrt", reference=_conv_bn_float(w, gamma, var))
    assert rep.result("weight-per-channel").count == 1
    # a float weight the int8 values were not rounded from is not taken, and the user is told
    stranger = _weighted_graph("Conv", folded * 1.1, None, 0, form="float")
    _, rep = optimize(m, "tensorrt", reference=stranger)
    assert rep.result("weight-per-channel").count == 0
    assert any(x.startswith("--reference: 1 re-rounded weight(s) ('op')") for x in rep.warnings)


def test_reference_weights_follow_a_renamed_conv_that_folded_its_bn() -> None:
    """AMD Quark folds BN itself and names the folded conv after the conv's old output tensor
    ('c'), writing the BN's output ('y'): no node name matches, the output tensor does. The float
    weight is found through it (BN folded), and the op's reference name is handed on for the
    float model's input means."""
    import qdq_optimizer.api as api
    from qdq_optimizer.reference_weights import FLOAT_WEIGHTS, REFERENCE_NAMES, reference_weights

    w = _narrow_conv_weight()
    gamma, var = np.linspace(0.5, 2, 6), np.linspace(0.1, 3, 6)
    folded = (w * (gamma / np.sqrt(var + 1e-5)).reshape(6, 1, 1, 1)).astype(np.float32)
    m = _weighted_graph("Conv", folded, _per_tensor(folded), 0)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    conv.name = "c"
    float_model = _conv_bn_float(w, gamma, var)
    found, missing = reference_weights(m, float_model)
    assert list(found) == ["c"] and missing == []
    np.testing.assert_allclose(found["c"], folded, rtol=1e-6)
    settings = api.reference_weight_pre_pass(m, float_model, [])
    assert settings[REFERENCE_NAMES] == {"c": "op"} and list(settings[FLOAT_WEIGHTS]) == ["c"]
    _, rep = optimize(m, "tensorrt", reference=float_model)
    assert rep.result("weight-per-channel").count == 1
    assert not any("--reference" in x for x in rep.warnings)
    # an op of another kind writing that tensor is no match
    conv.op_type = "ConvTranspose"
    assert reference_weights(m, float_model)[0] == {}


def test_reference_weights_need_a_name_that_identifies_one_node() -> None:
    from qdq_optimizer.reference_weights import reference_weights

    w = _narrow_conv_weight()
    m = _weighted_graph("Conv", w, _per_tensor(w), 0)
    float_model = _weighted_graph("Conv", w, None, 0, form="float")
    found, missing = reference_weights(m, float_model)
    assert list(found) == ["op"] and missing == []
    conv = next(n for n in float_model.graph.node if n.op_type == "Conv")
    conv.name = ""  # a nameless float conv identifies nothing
    assert reference_weights(m, float_model) == ({}, ["op"])


def test_uint8_weights_converted_from_the_reference_float_weights() -> None:
    # ONNX Runtime's uint8 weights (asymmetric, per tensor): symmetric-int8 must re-quantize
    # them; with the float model it does so from the float values, not the re-rounded uint8 ones.
    w = _narrow_conv_weight()
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    s = np.float32((hi - lo) / 255)
    zp = np.uint8(round(-lo / s))
    m = _weighted_graph("Conv", w, _per_tensor(w), 0)
    inits = {t.name: t for t in m.graph.initializer}
    q = np.clip(np.rint(w / s) + zp, 0, 255).astype(np.uint8)
    for name, value in (("w", q), ("ws", s), ("wz", zp)):
        inits[name].CopyFrom(numpy_helper.from_array(np.asarray(value), name))
    float_model = _weighted_graph("Conv", w, None, 0, form="float")
    alone, _ = optimize(m, "tensorrt")
    out, rep = optimize(m, "tensorrt", reference=float_model)
    changes = [c.detail for c in rep.result("symmetric-int8").changes]
    assert any(
        "uint8 weight 'w' -> symmetric int8 per-channel (axis 0) from the reference" in c
        for c in changes
    )
    ref = _raw(float_model, _x(4))
    assert _sqnr(ref, _raw(out, _x(4))) > _sqnr(ref, _raw(alone, _x(4))) + 3  # measured +7.5


def _asymmetric_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NNCF's asymmetric weights: int8 per output channel over [min, max], zero point per channel."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    lo, hi = np.minimum(flat.min(1), 0), np.maximum(flat.max(1), 0)
    s = ((hi - lo) / 255).astype(np.float32)
    zp = np.clip(np.rint(-128 - lo / s), -128, 127).astype(np.int8)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / s.reshape(shape)) + zp.reshape(shape), -128, 127).astype(np.int8)
    return q, s, zp


def test_asymmetric_per_channel_weights_converted_from_the_reference_float_weights() -> None:
    """NNCF's asymmetric weights (int8, a zero point per channel): symmetric-int8 re-quantizes
    them from the float model's weights, not from their rounded values (rounding twice)."""
    w = _narrow_conv_weight()
    m = _weighted_graph("Conv", w, _per_tensor(w), 0)
    q, s, zp = _asymmetric_per_channel(w)
    inits = {t.name: t for t in m.graph.initializer}
    for name, value in (("w", q), ("ws", s), ("wz", zp)):
        inits[name].CopyFrom(numpy_helper.from_array(np.asarray(value), name))
    float_model = _weighted_graph("Conv", w, None, 0, form="float")
    from qdq_optimizer.reference_weights import reference_weights

    found, missing = reference_weights(m, float_model)
    assert list(found) == ["op"] and missing == []
    alone, _ = optimize(m, "tensorrt")
    out, rep = optimize(m, "tensorrt", reference=float_model)
    changes = [c.detail for c in rep.result("symmetric-int8").changes]
    assert any("int8 weight 'w' -> symmetric int8 per-channel (axis 0) from the reference" in c
               for c in changes), changes  # fmt: skip
    assert not rep.warnings or not any("--reference" in x for x in rep.warnings)
    # the converted int8 values are exactly the float weight's symmetric per-channel rounding
    dq = _weight_dq(out)
    got = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    s_new = np.abs(w).reshape(6, -1).max(1) / 127
    expect = np.clip(np.rint(w / s_new.reshape(-1, 1, 1, 1).astype(np.float32)), -127, 127)
    assert np.array_equal(got[dq.input[0]], expect.astype(np.int8))
    from_rounded = {t.name: numpy_helper.to_array(t) for t in alone.graph.initializer}
    assert not np.array_equal(from_rounded[_weight_dq(alone).input[0]], expect.astype(np.int8))


def test_reference_pre_pass_skips_graphs_without_per_tensor_weights_cheaply() -> None:
    from qdq_optimizer.reference_weights import may_reround_weights as may

    w = _narrow_conv_weight()
    per_channel = (np.abs(w).reshape(6, -1).max(1) / 127).astype(np.float32)
    assert may(_weighted_graph("Conv", w, _per_tensor(w), 0))
    assert not may(_weighted_graph("Conv", w, per_channel, 0))
    one = w[:1]  # one output channel: per-tensor is per-channel already
    assert not may(_weighted_graph("Conv", one, _per_tensor(one), 0))
    # uint8 or asymmetric weights at any granularity: symmetric-int8 re-rounds them
    m = _weighted_graph("Conv", w, per_channel, 0)
    zp = next(t for t in m.graph.initializer if t.name == "wz")
    zp.CopyFrom(numpy_helper.from_array(np.arange(6, dtype=np.int8), "wz"))
    assert may(m)
    # the pair form: the rules re-round it from its own float values (and keep corrected means)
    assert may(_weighted_graph("Conv", w, per_channel, 0, form="pair"))


def test_reference_pre_pass_indexes_nothing_when_no_rule_rerounds_a_weight(monkeypatch) -> None:
    """Per-channel symmetric int8 weights: no rule re-rounds them, so the pre-pass returns
    before indexing either model (corrected biases would serve no rule either)."""
    import qdq_optimizer.api as api
    from qdq_optimizer.graph import QGraph

    w = _narrow_conv_weight()
    per_channel = (np.abs(w).reshape(6, -1).max(1) / 127).astype(np.float32)
    m = _weighted_graph("Conv", w, per_channel, 0)
    float_model = _weighted_graph("Conv", w * 1.5, None, 0, form="float")  # a stranger's bias too

    def refuse(*_a, **_k):
        raise AssertionError("indexed a model")

    monkeypatch.setattr(QGraph, "from_model", staticmethod(refuse))
    assert api.reference_weight_pre_pass(m, float_model, []) == {}
