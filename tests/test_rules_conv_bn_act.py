"""Rule 3: BN folding is exact in the integers; Q/DQ between a conv and its activation goes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_optimizer.api import optimize
from qdq_optimizer.testing.graphgen import FloatBuilder, ort_qdq
from tests.rules_util import G, count, outputs


def bn_model(form: str) -> tuple[onnx.ModelProto, dict]:
    g = G(c=4, hw=6, seed=3)
    cout = 4
    gamma = np.array([1.3, -0.7, 0.4, -2.1], np.float32)  # negative gammas flip int8 signs
    var = np.array([0.5, 2.0, 1.0, 0.3], np.float32)
    y = g.conv(g.q("x", 0.02), cout=cout, form=form, name="conv", k=3)
    y = g.op(
        "BatchNormalization",
        [
            y,
            g.const(gamma),
            g.const(np.full(cout, 0.1, np.float32)),
            g.const(np.full(cout, 0.2, np.float32)),
            g.const(var),
        ],
        "bn",
        epsilon=1e-3,
    )
    y = g.op("LeakyRelu", [y], "act", alpha=0.1)
    return g.model([g.conv(g.q(y, 0.05))]), {"g": gamma / np.sqrt(var + np.float32(1e-3))}


def ort_quantize(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """QuantizeLinear computed by ONNX Runtime itself (the reference for 'bit-exact')."""
    node = helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], axis=0)
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape))],
        [helper.make_tensor_value_info("q", TensorProto.INT8, list(w.shape))],
        [
            numpy_helper.from_array(scale.astype(np.float32), "s"),
            numpy_helper.from_array(np.zeros(scale.size, np.int8), "z"),
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return outputs(m, {"w": w.astype(np.float32)})[0]


def conv_weight(model: onnx.ModelProto, conv_name: str = "conv"):
    """(float weight or int8 weight, scale, form) feeding the conv named ``conv_name``."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.name == conv_name)
    dq = prod[conv.input[1]]
    src = dq.input[0]
    if src in inits:
        return inits[src], inits[dq.input[1]], "int8"
    q = prod[src]
    return inits[q.input[0]], inits[q.input[1]], "pair"


@pytest.mark.parametrize("form", ["pair", "int8"])
def test_bn_fold_is_bit_exact_in_the_int8_weights(form: str) -> None:
    m, info = bn_model(form)
    w0, s0, _ = conv_weight(m)
    wq0 = ort_quantize(w0, s0) if form == "pair" else w0
    g = info["g"]
    sign = np.where(g < 0, -1, 1).astype(np.int8)[:, None, None, None]
    for keep in (True, False):
        out, rep = optimize(m, "tensorrt", keep_weight_q=keep)
        assert count(out, "BatchNormalization") == 0
        assert rep.result("fold-bn").count == 1
        w1, s1, form1 = conv_weight(out)
        np.testing.assert_array_equal(s1, (s0 * np.abs(g)).astype(np.float32))
        wq1 = ort_quantize(w1, s1) if form1 == "pair" else w1
        assert form1 == ("pair" if keep and form == "pair" else "int8")
        assert wq1.dtype == np.int8
        np.testing.assert_array_equal(wq1, wq0 * sign)  # bit-exact: same integers, signs of gamma
        a, b = outputs(m, seed=1)[0], outputs(out, seed=1)[0]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_bn_fold_on_a_float_conv() -> None:
    g = G(c=2)
    y = g.conv("x", form="float", name="conv")
    y = g.op(
        "BatchNormalization",
        [y, *(g.const(np.array(v, np.float32)) for v in ([2, -1], [0, 1], [0.5, 0], [1, 4]))],
        "bn",
    )
    m = g.model([y])
    out, _ = optimize(m, "tensorrt")
    assert count(out, "BatchNormalization") == 0
    np.testing.assert_allclose(outputs(out)[0], outputs(m)[0], rtol=1e-5, atol=1e-5)


def test_bn_is_not_folded_when_the_conv_output_has_another_reader() -> None:
    g = G(c=2)
    y = g.conv(g.q("x", 0.02), name="conv")
    bn = g.op("BatchNormalization", [y, *(g.const(np.ones(2, np.float32)) for _ in range(4))], "bn")
    out, _ = optimize(g.model([bn, y]), "tensorrt")
    assert count(out, "BatchNormalization") == 1


@pytest.mark.parametrize("act", ["relu", "leaky", "silu", "clip", "hardswish"])
def test_ort_pairs_between_conv_and_activation_are_removed(act: str) -> None:
    fm = FloatBuilder(seed=1).build(["conv", "conv"], [act, act], head=False)
    m = ort_qdq(fm)
    out, rep = optimize(m, "tensorrt")
    prod = {o: n for n in out.graph.node for o in n.output}
    for conv in (n for n in out.graph.node if n.op_type == "Conv"):
        readers = [n for n in out.graph.node if conv.output[0] in n.input]
        assert readers and all(r.op_type != "QuantizeLinear" for r in readers), conv.name
        for r in readers:
            if r.op_type == "Sigmoid":  # SiLU: the Mul reads conv and sigmoid directly
                mul = next(n for n in out.graph.node if r.output[0] in n.input)
                assert set(mul.input) == {conv.output[0], r.output[0]}
    # the pair at the activation output stays where a quantized conv reads it
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert prod[convs[1].input[0]].op_type == "DequantizeLinear"
    assert rep.result("epilogue-qdq").count >= 1
