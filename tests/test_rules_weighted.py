"""Rule 4: weights become int8 initializers (bit-exact), int32 biases float, output Q/DQ that
nothing INT8 reads goes, and weighted-op inputs stay quantized."""

from __future__ import annotations

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
