"""Removed Q/DQ pairs keep their saturation as a Clip (actions/clamps.py), bit-exact otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import qdq_optimizer.actions.float_islands as float_islands
import qdq_optimizer.actions.weighted as weighted
from qdq_optimizer.api import optimize
from qdq_optimizer.verify import sqnr
from tests.rules_util import G, count, outputs


def conv_then_float(scale: float, relu: bool) -> onnx.ModelProto:
    """x -> Q/DQ -> conv [-> Relu] -> Q/DQ(scale) -> Softmax -> output: TensorRT runs the
    Softmax in float, so float-islands (after Relu) or weighted-output-qdq (right after the
    conv) removes the last pair."""
    g = G(c=4, hw=6, seed=5)
    y = g.conv(g.q("x", 0.02, "xin"), name="conv")
    if relu:
        y = g.op("Relu", [y], "relu")
    y = g.q(y, scale, "out")
    return g.model([g.op("Softmax", [y], "soft", axis=1)], inputs={"x": [1, 4, 6, 6]})


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32) * 3}


def _plain(monkeypatch) -> None:
    def bypass(graph, q, dq, consumers=None):
        graph.bypass_qdq(q, dq, consumers)

    monkeypatch.setattr(float_islands, "bypass_keeping_saturation", bypass)
    monkeypatch.setattr(weighted, "bypass_keeping_saturation", bypass)


def _clip_bounds(model: onnx.ModelProto) -> tuple[float, float]:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    return float(inits[clip.input[1]]), float(inits[clip.input[2]])


@pytest.mark.parametrize("relu, rule", [(True, "float-islands"), (False, "weighted-output-qdq")])
def test_saturation_kept_as_clip(relu, rule, monkeypatch) -> None:
    m = conv_then_float(0.01, relu)
    out, rep = optimize(m, "tensorrt")
    assert rep.result(rule).count == 1 and count(out, "QuantizeLinear") == 1
    assert _clip_bounds(out) == (np.float32(-128 * 0.01), np.float32(127 * 0.01))
    onnx.checker.check_model(out, full_check=True)
    feeds = _feeds()
    ref, kept = outputs(m, feeds)[0], outputs(out, feeds)[0]
    _plain(monkeypatch)
    dropped = outputs(optimize(m, "tensorrt")[0], feeds)[0]
    # the input saturates here: without the Clip the rewrite loses the calibrated cut
    assert not np.array_equal(kept, dropped)
    assert sqnr(ref, kept) > sqnr(ref, dropped) + 10
    # a second run changes nothing
    assert optimize(out, "tensorrt")[1].total_changes == 0


@pytest.mark.parametrize("relu", [True, False])
def test_clip_is_bit_exact_where_nothing_saturates(relu, monkeypatch) -> None:
    m = conv_then_float(1.0, relu)  # range +-127: nothing saturates
    out, _ = optimize(m, "tensorrt")
    assert count(out, "Clip") == 1
    feeds = _feeds()
    kept = outputs(out, feeds)[0]
    _plain(monkeypatch)
    assert np.array_equal(kept, outputs(optimize(m, "tensorrt")[0], feeds)[0])


def test_no_clip_when_the_producer_range_is_inside() -> None:
    """After a Sigmoid ([0, 1]) or a narrower Clip the pair's range cannot bite."""
    g = G(c=4, hw=6, seed=5)
    x = g.conv(g.q("x", 0.02, "xin"), name="conv")
    s = g.q(g.op("Sigmoid", [x], "sig"), 1 / 100, "after_sig")  # saturates at 1.27 > 1
    lo, hi = g.const(np.float32(0)), g.const(np.float32(6))
    c = g.q(g.op("Clip", [x, lo, hi], "relu6"), 0.05, "after_clip")  # 6.35 > 6
    wide = g.q(g.op("Clip", [x, lo, g.const(np.float32(8))], "clip8"), 0.05, "after_clip8")
    m = g.model(
        [g.op("Tanh", [s], "t1"), g.op("Tanh", [c], "t2"), g.op("Tanh", [wide], "t3")],
        inputs={"x": [1, 4, 6, 6]},
    )
    out, rep = optimize(m, "tensorrt")
    assert rep.result("float-islands").count == 3
    clips = [n for n in out.graph.node if n.op_type == "Clip"]
    # only the pair after Clip(0, 8) (wider than 127 * 0.05 = 6.35) keeps a clamp
    assert len(clips) == 3 and sum(n.input[0] == "clip8_out" for n in clips) == 1


def test_no_clip_after_a_softmax_at_scale_one_over_127() -> None:
    """ORT's fixed softmax-output scale 1/127 saturates at 127 * (1/127): just under 1.0 in
    float64 but exactly 1.0 in the graph's float32, so the [0, 1] Softmax needs no Clip."""
    g = G(c=4, hw=6, seed=5)
    x = g.conv(g.q("x", 0.02, "xin"), name="conv")
    s = g.q(g.op("Softmax", [x], "soft", axis=1), 1 / 127, "after_soft")
    m = g.model([g.op("Tanh", [s], "t")], inputs={"x": [1, 4, 6, 6]})
    assert 127 * float(np.float32(1 / 127)) < 1.0  # the float64 comparison would add a Clip
    out, rep = optimize(m, "tensorrt")
    assert rep.result("float-islands").count == 1
    assert not [n for n in out.graph.node if n.op_type == "Clip"]


def test_clip_keeps_the_graph_float_type() -> None:
    """An fp16 graph (opset 19 Q/DQ with fp16 scales) gets fp16 Clip bounds."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(0.01, np.float16), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"], name="Q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="DQ"),
        helper.make_node("Softmax", ["d"], ["y"], name="soft"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [1, 4]) for n in ("x", "y")]
    g = helper.make_graph(nodes, "fp16", io[:1], io[1:], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    out, rep = optimize(m, "tensorrt")
    assert rep.result("float-islands").count == 1
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    clip = next(n for n in out.graph.node if n.op_type == "Clip")
    assert {inits[i].dtype for i in clip.input[1:]} == {np.dtype(np.float16)}
    x = np.array([[0.5, 3, -1, 0.001]], np.float16)
    y = outputs(out, {"x": x})[0]
    expected = np.exp(np.clip(x.astype(np.float32), 0, np.float16(0.01) * 127))  # Relu, Clip
    assert np.allclose(y, expected / expected.sum(), atol=2e-3)
