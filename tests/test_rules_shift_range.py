"""``shift-relu-range``: a Relu/ReLU6 output [0, a] between a conv and unpadded convs is shifted
by a/2 onto all the int8 codes (half the step), the convs' biases taking the shift out again."""

from __future__ import annotations

import numpy as np
import onnx

from qdq_optimizer.api import optimize
from tests.rules_util import G, count, outputs


def _net(act: str = "Relu", k2: int = 1, skip: bool = False, scale: float = 0.02):
    """x -> Q/DQ -> conv1 (1x1) -> act -> Q/DQ(scale) -> conv2 (k2 x k2) [-> + act output]."""
    g = G(c=4, hw=6, seed=1)
    h = g.conv(g.q("x", 0.03), k=1)
    if act == "Relu":
        a = g.op("Relu", [h], "act")
    else:
        a = g.op("Clip", [h, g.const(np.float32(0)), g.const(np.float32(6))], "act")
    y = g.conv(g.q(a, scale, "mid"), k=k2, name="conv2")
    if skip:
        y = g.op("Add", [y, a])
    return g.model([y])


def _without_mid_pair(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with the activation pair under test removed: its only rounding."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [n for n in m.graph.node if n.name not in ("mid_Q", "mid_DQ")]
    for n in keep:
        for i, t in enumerate(n.input):
            if t == "mid_DQ_out":
                n.input[i] = "act_out"
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - x) ** 2)))


def _x() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)}


def test_relu_output_uses_all_codes_and_rounds_finer() -> None:
    m = _net()
    out, rep = optimize(m, "tensorrt")
    res = rep.result("shift-relu-range")
    assert res.count == 1 and "onto all int8 codes" in res.changes[0].detail
    assert count(out, "Relu") == 0 and count(out, "Clip") == 1
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    clip = next(n for n in out.graph.node if n.op_type == "Clip")
    assert np.isclose(consts[clip.input[1]], -127 * 0.01)  # -c, c = 127 * s/2
    # shifted values get a new name: a name keeps its input values (calibration ranges read it)
    assert clip.output[0] != "act_out" and "act_out" not in {
        o for n in out.graph.node for o in n.output
    }
    q = next(
        n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == clip.output[0]
    )
    assert np.isclose(consts[q.input[1]], 0.01)
    # the pair under test is the only difference from its float twin: half the step, a quarter
    # of the noise (the old grid's points are all on the new one)
    twin = outputs(_without_mid_pair(m), _x())[0]
    before, after = _sqnr(twin, outputs(m, _x())[0]), _sqnr(twin, outputs(out, _x())[0])
    assert after > before + 4, (before, after)
    _, again = optimize(out, "tensorrt")  # idempotent: the shifted Clip's min is not 0
    assert again.result("shift-relu-range").count == 0


def test_relu6_keeps_its_upper_clamp_shifted() -> None:
    out, rep = optimize(_net("Clip", scale=6 / 127), "tensorrt")
    assert rep.result("shift-relu-range").count == 1
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    clip = next(n for n in out.graph.node if n.op_type == "Clip")
    c = 127 * float(np.float32(6 / 127) / 2)
    assert np.isclose(consts[clip.input[1]], -c) and np.isclose(consts[clip.input[2]], 6 - c)


def test_left_alone_for_padded_consumers_other_readers_and_the_ignore_list() -> None:
    for model, ignore in ((_net(k2=3), ()), (_net(skip=True), ()), (_net(), ("^conv2$",))):
        out, rep = optimize(model, "tensorrt", ignore=ignore)
        assert rep.result("shift-relu-range").count == 0
        assert count(out, "Relu") == 1
