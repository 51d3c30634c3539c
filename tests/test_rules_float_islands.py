"""Rule 5: DQ feeding only float ops goes; the ignore list keeps chosen weighted ops float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qdq_optimizer.api import lint, optimize
from tests.rules_util import G, count, node, outputs


def head_model():
    g = G(seed=2)
    y = g.op("Relu", [g.conv(g.q("x", 0.05), name="/model.3/conv/Conv")])
    y = g.conv(g.q(y, 0.05, "headin"), name="/model.105/m.0/Conv")
    y = g.q(y, 0.1, "headout")
    y = g.q(g.op("Sigmoid", [y], "sig"), 0.01, "sigout")
    y = g.op("Reshape", [y, g.const(np.array([1, -1], np.int64))], "reshape")
    return g.model([y])


def test_head_pairs_before_float_ops_go_in_one_pass() -> None:
    out, rep = optimize(head_model(), "tensorrt")
    names = {n.name for n in out.graph.node}
    assert "sigout_Q" not in names and "headout_Q" not in names
    assert "headin_Q" in names  # the head conv is quantized and keeps its input pair
    assert rep.iterations <= 2


def test_ignore_regex_keeps_detect_conv_float_by_module_path() -> None:
    m = head_model()
    out, rep = optimize(m, "tensorrt", ignore=[r"model\.105\.m\.(.*)"])
    prod = {o: n for n in out.graph.node for o in n.output}
    conv = node(out, "/model.105/m.0/Conv")
    assert conv.input[0] not in prod or prod[conv.input[0]].op_type != "DequantizeLinear"
    assert conv.input[1] not in prod  # a float initializer
    assert rep.result("keep-ignored-float").count == 1
    first = node(out, "/model.3/conv/Conv")
    assert prod[first.input[0]].op_type == "DequantizeLinear"
    # float head = fewer quantization steps: closer to the input model's float path
    assert np.isfinite(outputs(out)[0]).all()


def test_yolov7_rule_set_ignores_the_seed_head() -> None:
    out, _ = optimize(head_model(), "yolov7")
    assert count(out, "QuantizeLinear") == 1


def squeeze_excitation(pool: str):
    """x -> conv -> Relu -> Q/DQ -> GlobalAveragePool -> 1x1 convs (float here) -> Sigmoid -> Mul."""
    g = G(seed=4)
    y = g.op("Relu", [g.conv(g.q("x", 0.05), name="conv")], "relu")
    attrs = {"kernel_shape": [4, 4]} if pool == "AveragePool" else {}
    p = g.op(pool, [g.q(y, 0.08, "poolin")], "pool", **attrs)
    s = g.op("Sigmoid", [g.conv(g.op("Relu", [g.conv(p, form="float")]), form="float")], "gate")
    return g.model([g.op("Mul", [y, s], "scale")])


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "AveragePool"])
def test_the_pair_before_an_average_pool_stays(pool: str) -> None:
    """TensorRT runs average pooling in INT8 between Q/DQ (ops.INT8_POOLING_OPS): the pair in
    front of a squeeze-excitation pool is not a float island, for the rule and for lint."""
    m = squeeze_excitation(pool)
    out, rep = optimize(m, "tensorrt")
    assert "poolin_Q" in {n.name for n in out.graph.node}
    assert rep.result("float-islands").count == 0
    assert not [p for p in lint(m, "cleanup", checks=True) if p.rule_id == "trt-float-island"]
    # a float consumer in the pool's place makes the same pair an island
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    next(n for n in bad.graph.node if n.name == "pool").op_type = "Relu"
    for a in list(next(n for n in bad.graph.node if n.name == "pool").attribute):
        next(n for n in bad.graph.node if n.name == "pool").attribute.remove(a)
    assert "poolin_Q" not in {n.name for n in optimize(bad, "tensorrt")[0].graph.node}
