"""``channel-scales``: a per-channel activation Q/DQ (NNCF's, on depthwise conv inputs) becomes
per-tensor with its channel factors folded into the producing Conv/BN and the depthwise convs,
every value keeping its integer; other shapes of graph are left to ``symmetric-int8``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qdq_optimizer.api import optimize
from qdq_optimizer.guard import without
from qdq_optimizer.ruleset import load_ruleset
from tests.rules_util import G, count, outputs

C = 4
# one narrow channel among wide ones: one per-tensor scale (the largest) costs it 20x the step
SCALES = np.array([0.02, 0.001, 0.015, 0.01], np.float32)


def _net(
    act: str = "Relu",
    bn: bool = False,
    reader: str = "depthwise",
    dtype=np.uint8,
    weights: str = "int8",
    multiplier: int = 1,
    reader_weights=np.int8,
    scales: np.ndarray = SCALES,
) -> onnx.ModelProto:
    """x -> Q/DQ -> conv1 (1x1) [-> BN] -> act -> Q/DQ(per channel) -> reader (3x3)."""
    g = G(c=C, hw=6, seed=3)
    h = g.conv(g.q("x", 0.03), k=1, form=weights, name="conv1")
    if bn:
        rng = np.random.default_rng(5)
        params = [rng.uniform(0.5, 1.5, C), rng.normal(0, 0.2, C), rng.normal(0, 0.1, C)]
        params.append(rng.uniform(0.5, 1.5, C))
        h = g.op("BatchNormalization", [h, *(g.const(p.astype(np.float32)) for p in params)])
    if act == "LeakyRelu":
        a = g.op("LeakyRelu", [h], "act", alpha=0.1)
    elif act == "Sigmoid":
        a = g.op("Mul", [h, g.op("Sigmoid", [h])], "act")
    elif act.startswith("Clip"):  # ReLU6 ("Clip") or a cap of 4, which the pair's range passes
        cap = 6.0 if act == "Clip" else float(act[4:])
        a = g.op("Clip", [h, g.const(np.float32(0)), g.const(np.float32(cap))], "act")
    else:
        a = g.op(act, [h], "act")
    s, z = g.const(scales), g.const(np.zeros(C, dtype))
    qo = g.op("QuantizeLinear", [a, s, z], "mid_Q", axis=1)
    dq = g.op("DequantizeLinear", [qo, s, z], "mid_DQ", axis=1)
    if reader == "conv":
        y = g.conv(dq, k=3, name="conv2")
    else:
        cout = C * multiplier
        w = (g.rng.standard_normal((cout, 1, 3, 3)) * 0.3).astype(np.float32)
        ws = (np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
        wq = np.clip(np.rint(w / ws[:, None, None, None]), -127, 127)
        if reader_weights is np.uint8:  # asymmetric uint8 (ORT's weight_type QUInt8), zp 128
            wq, zp = (wq + 128).astype(np.uint8), np.full(cout, 128, np.uint8)
        elif reader_weights == "asymmetric":  # NNCF's asymmetric int8 weights: zp per channel
            zp = np.arange(cout, dtype=np.int8) * 3 - 4
            wq = np.clip(wq + zp[:, None, None, None], -128, 127).astype(np.int8)
        elif reader_weights == "uint8-per-tensor":  # ORT's per_channel=False, QUInt8 weights
            ws = np.float32(np.abs(w).max() / 127)
            wq, zp = (np.clip(np.rint(w / ws), -127, 127) + 128).astype(np.uint8), np.uint8(128)
        else:
            wq, zp = wq.astype(np.int8), np.zeros(cout, np.int8)
        wdq = g.op("DequantizeLinear", [g.const(wq), g.const(ws), g.const(zp)], axis=0)
        b = g.const((g.rng.standard_normal(cout) * 0.1).astype(np.float32))
        y = g.op("Conv", [dq, wdq, b], "conv2", kernel_shape=[3, 3], pads=[1] * 4, group=C)
    return g.model([y])


def _only(rule_id: str):
    """The tensorrt rule set with one rule (its Q/DQ left as the rule leaves it)."""
    rules = load_ruleset("tensorrt")
    return without(rules, [r.id for r in rules.rules if r.id != rule_id])


def _x() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": (rng.standard_normal((1, C, 6, 6)) * 2).astype(np.float32)}


def _mid_params(model: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray, int | None]:
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.name == "mid_Q")
    axis = next((a.i for a in q.attribute if a.name == "axis"), None)
    return consts[q.input[1]], consts[q.input[2]], axis


def _codes(model: onnx.ModelProto, gain: float = 1.0) -> np.ndarray:
    """The integers the pair under test produces (its Q output made a graph output)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    q = next(n for n in m.graph.node if n.name == "mid_Q")
    zp = next(t for t in m.graph.initializer if t.name == q.input[2])
    m.graph.output.append(onnx.helper.make_tensor_value_info(q.output[0], zp.data_type, None))
    return outputs(m, {"x": _x()["x"] * np.float32(gain)})[-1]


@pytest.mark.parametrize(
    "act, bn, weights, multiplier",
    [("Relu", False, "int8", 1), ("Relu", True, "int8", 1), ("LeakyRelu", False, "pair", 1)]
    + [("Relu", False, "float", 2), ("Clip", False, "int8", 1)],
)
def test_per_channel_pair_becomes_per_tensor_with_every_integer_kept(
    act: str, bn: bool, weights: str, multiplier: int
) -> None:
    m = _net(act, bn=bn, weights=weights, multiplier=multiplier)
    out, rep = optimize(m, _only("channel-scales"), lint_result=False)
    res = rep.result("channel-scales")
    assert res.count == 1 and "every value on the integer it had" in res.changes[0].detail
    scale, zp, axis = _mid_params(out)
    assert scale.size == 1 and zp.size == 1 and axis is None
    assert np.isclose(float(scale), SCALES.max())
    assert np.array_equal(_codes(out), _codes(m))  # same integers: the rounding is unchanged
    ref, got = outputs(m, _x())[0], outputs(out, _x())[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(out, full_check=True)
    _, again = optimize(out, _only("channel-scales"), lint_result=False)  # idempotent
    assert again.result("channel-scales").count == 0


def test_full_rule_set_rounds_the_narrow_channel_as_finely_as_the_producer() -> None:
    """Through symmetric-int8 too: with the fold the narrow channel keeps its step (x2 for
    uint8 -> int8); without it the largest scale gives it 20x (the loss the rule removes)."""
    m = _net()
    out, rep = optimize(m, "tensorrt")
    assert rep.result("channel-scales").count == 1
    plain, rep2 = optimize(m, without(load_ruleset("tensorrt"), ["channel-scales"]))
    assert rep2.result("symmetric-int8").count >= 1
    ref = outputs(m, _x())[0]

    def err(model: onnx.ModelProto) -> float:
        return float(np.mean((outputs(model, _x())[0] - ref) ** 2))

    assert err(out) < err(plain) / 4, (err(out), err(plain))


def test_left_alone_when_an_ordinary_conv_reads_the_pair() -> None:
    """An ordinary conv sums the channels under one weight scale per output channel: the
    factor could not leave its integers alone."""
    _, rep = optimize(_net(reader="conv"), "tensorrt")
    assert rep.result("channel-scales").count == 0
    assert rep.result("symmetric-int8").count >= 1  # the plain conversion still happens


def _err(model: onnx.ModelProto, ref: np.ndarray) -> float:
    return float(np.mean((outputs(model, _x())[0] - ref) ** 2))


@pytest.mark.parametrize("act", ["Sigmoid", "Clip4"], ids=["silu-producer", "cap-below-range"])
def test_factor_goes_into_a_new_mul_when_no_conv_can_take_it(act: str) -> None:
    """SiLU is not homogeneous, and a cap some channel's range passes would have to scale per
    channel: the factor goes into a Mul before the Q (a pointwise op TensorRT fuses with the
    activation and the Q), and every value still lands on the integer it had."""
    m = _net(act)
    out, rep = optimize(m, _only("channel-scales"), lint_result=False)
    res = rep.result("channel-scales")
    assert res.count == 1 and "a new Mul" in res.changes[0].detail
    assert "every value on the integer it had" in res.changes[0].detail
    q = next(n for n in out.graph.node if n.name == "mid_Q")
    mul = next(n for n in out.graph.node if n.output[0] == q.input[0])
    act_node = next(n for n in out.graph.node if n.name == "act")
    assert mul.op_type == "Mul" and mul.input[0] == act_node.output[0]
    scale, zp, axis = _mid_params(out)
    assert scale.size == 1 and zp.size == 1 and axis is None
    assert np.array_equal(_codes(out), _codes(m))
    np.testing.assert_allclose(outputs(out, _x())[0], outputs(m, _x())[0], rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(out, full_check=True)
    _, again = optimize(out, _only("channel-scales"), lint_result=False)
    assert again.result("channel-scales").count == 0
    full, _ = optimize(m, "tensorrt")
    plain, _ = optimize(m, without(load_ruleset("tensorrt"), ["channel-scales"]))
    ref = outputs(m, _x())[0]
    assert _err(full, ref) < _err(plain, ref) / 4, (_err(full, ref), _err(plain, ref))
    from qdq_optimizer.api import lint

    assert lint(full, "tensorrt") == []


def test_zero_point_per_channel_becomes_one_symmetric_scale_per_channel_first() -> None:
    """NNCF's MIXED preset: int8 with a zero point per channel. Each channel's range becomes
    symmetric (its step at most twice its own) and the factors fold as before, instead of one
    scale covering the widest channel (20x the step of the narrow one here)."""
    g_scales = SCALES * np.float32(0.5)
    m = _net("Sigmoid", dtype=np.int8, scales=g_scales)
    zps = np.array([-128, -100, -60, 0], np.int8)
    q = next(n for n in m.graph.node if n.name == "mid_Q")
    t = next(t for t in m.graph.initializer if t.name == q.input[2])  # the pair's (shared)
    t.CopyFrom(numpy_helper.from_array(zps, t.name))
    out, rep = optimize(m, _only("channel-scales"), lint_result=False)
    res = rep.result("channel-scales")
    assert res.count == 1 and "each channel's range made symmetric" in res.changes[0].detail
    scale, zp, axis = _mid_params(out)
    assert scale.size == 1 and axis is None and zp.dtype == np.int8 and int(zp) == 0
    lo, hi = (-128 - zps.astype(float)) * g_scales, (127 - zps.astype(float)) * g_scales
    assert np.isclose(float(scale), (np.maximum(-lo, hi) / 127).max(), rtol=1e-6)
    onnx.checker.check_model(out, full_check=True)
    _, rep = optimize(out, "tensorrt")
    assert rep.result("symmetric-int8").count == 0 or all(
        "mid_Q" not in c.nodes for c in rep.result("symmetric-int8").changes
    )
    full, _ = optimize(m, "tensorrt")
    plain, _ = optimize(m, without(load_ruleset("tensorrt"), ["channel-scales"]))
    ref = outputs(m, _x())[0]
    assert _err(full, ref) < _err(plain, ref) / 4, (_err(full, ref), _err(plain, ref))


@pytest.mark.parametrize("reader_weights", [np.uint8, "asymmetric"])
def test_asymmetric_depthwise_weights_keep_their_zero_points(reader_weights) -> None:
    """NNCF's asymmetric weights (per-channel zero points) and ORT's uint8 ones: the fold scales
    their per-channel scales and keeps each zero point, so every weight and activation keeps its
    integer; ``symmetric-int8`` then converts the weights from those values."""
    m = _net(reader_weights=reader_weights)
    out, rep = optimize(m, _only("channel-scales"), lint_result=False)
    assert rep.result("channel-scales").count == 1
    onnx.checker.check_model(out, full_check=True)
    assert np.array_equal(_codes(out), _codes(m))
    np.testing.assert_allclose(outputs(out, _x())[0], outputs(m, _x())[0], rtol=1e-5, atol=1e-5)
    consts = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    conv2 = next(n for n in out.graph.node if n.name == "conv2")
    wdq = next(n for n in out.graph.node if n.output[0] == conv2.input[1])
    before = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    wdq0 = next(
        n
        for n in m.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in before
        and before[n.input[0]].ndim == 4
        and before[n.input[0]].shape[1] == 1
    )
    assert consts[wdq.input[2]].dtype == before[wdq0.input[2]].dtype
    assert np.array_equal(consts[wdq.input[2]], before[wdq0.input[2]])  # zero points kept
    assert np.array_equal(consts[wdq.input[0]], before[wdq0.input[0]])  # integers kept
    # the whole rule set: symmetric int8 weights, the narrow channel keeps its step
    full, rep = optimize(m, "tensorrt")
    assert rep.result("channel-scales").count == 1
    plain, _ = optimize(m, without(load_ruleset("tensorrt"), ["channel-scales"]))
    ref = outputs(m, _x())[0]

    def err(model: onnx.ModelProto) -> float:
        return float(np.mean((outputs(model, _x())[0] - ref) ** 2))

    assert err(full) < err(plain) / 4, (err(full), err(plain))
    from qdq_optimizer.api import lint

    assert lint(full, "tensorrt") == []


def _float_reader(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with conv2's weight as the float values its DQ computes: a float model whose
    weight the quantized one was rounded from (what ``--reference`` gives)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    conv2 = next(n for n in m.graph.node if n.name == "conv2")
    dq = next(n for n in m.graph.node if n.output[0] == conv2.input[1])
    q, s, z = (consts[i].astype(np.float64) for i in dq.input)
    m.graph.initializer.append(numpy_helper.from_array(((q - z) * s).astype(np.float32), "wf"))
    conv2.input[1] = "wf"
    m.graph.node.remove(dq)
    return m


def test_rescaled_weight_is_not_requantized_from_the_reference(tmp_path) -> None:
    """A per-tensor uint8 depthwise weight the float model matches: the fold rescales it, so
    ``symmetric-int8`` must convert it from its own (rescaled) values, not from the reference's
    unscaled weight (which would multiply each channel by the fold's factor again)."""
    from qdq_optimizer.graph import QGraph
    from qdq_optimizer.reference_weights import FLOAT_WEIGHTS, float_weight_for

    m = _net(reader_weights="uint8-per-tensor")
    ref = _float_reader(m)
    onnx.save(ref, tmp_path / "ref.onnx")
    with_ref, rep = optimize(m, "tensorrt", reference=tmp_path / "ref.onnx")
    assert rep.result("channel-scales").count == 1
    without_ref, _ = optimize(m, "tensorrt")
    exact = outputs(m, _x())[0]
    scale = float(np.abs(exact).max())
    err = np.abs(outputs(with_ref, _x())[0] - exact).max() / scale
    err0 = np.abs(outputs(without_ref, _x())[0] - exact).max() / scale
    assert err < 0.05 and err <= err0 * 1.5, (err, err0)
    # the lookup itself: the reference while the integers round from it, nothing once rescaled
    graph = QGraph.from_model(m)
    conv2 = next(n for n in graph.nodes if n.name == "conv2")
    dq = graph.producer(conv2.inputs[1])
    wf = next(numpy_helper.to_array(t) for t in ref.graph.initializer if t.name == "wf")
    settings = {FLOAT_WEIGHTS: {"conv2": wf}}
    assert float_weight_for(graph, dq, settings) is not None
    graph.set_weight_qparams([dq], np.full(C, 0.01, np.float32), 0, "w", np.full(C, 128, np.uint8))
    assert float_weight_for(graph, dq, settings) is None


def test_a_second_reader_keeps_its_values_and_the_ignore_list_holds() -> None:
    """A second reader of the Relu output would see scaled values if conv1 took the factor: the
    factor goes into a Mul on the Q's input alone, and the other reader reads what it did."""
    m = _net()
    relu = next(n for n in m.graph.node if n.name == "act")
    m.graph.node.append(onnx.helper.make_node("Identity", [relu.output[0]], ["extra"], name="x2"))
    m.graph.output.append(onnx.helper.make_tensor_value_info("extra", 1, None))
    out, rep = optimize(m, _only("channel-scales"), lint_result=False)
    res = rep.result("channel-scales")
    assert res.count == 1 and "a new Mul" in res.changes[0].detail
    assert np.array_equal(_codes(out), _codes(m))
    for got, want in zip(outputs(out, _x()), outputs(m, _x()), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    _, rep = optimize(_net(), "tensorrt", ignore=["^conv2$"])
    assert rep.result("channel-scales").count == 0
    assert count(_net(), "QuantizeLinear") == 2


@pytest.mark.parametrize("act, bn", [("Relu", True), ("Sigmoid", False)], ids=["bn", "new-mul"])
def test_fp16_graph_stays_fp16_and_keeps_its_integers(act: str, bn: bool) -> None:
    """ModelOpt-style fp16 graphs: every scale the fold writes, and the new Mul's factor, is fp16
    (the model stays valid)."""
    from float_types import convert_float_type

    m = convert_float_type(_net(act, bn=bn))
    out, rep = optimize(m, _only("channel-scales"), lint_result=False)
    assert rep.result("channel-scales").count == 1
    onnx.checker.check_model(out, full_check=True)
    floats = {t.data_type for t in out.graph.initializer if t.data_type in (1, 10)}
    assert floats == {onnx.TensorProto.FLOAT16}
    x = {"x": _x()["x"].astype(np.float16)}
    ref, got = outputs(m, x)[0], outputs(out, x)[0]
    # fp16 scale products can move a value on a rounding edge by one step: nearly all agree
    close = np.isclose(got.astype(np.float32), ref.astype(np.float32), rtol=1e-2, atol=1e-2)
    assert close.mean() > 0.97, close.mean()


def test_lint_describes_the_conversion_the_fold_leaves() -> None:
    """Lint (a dry run) reports the fold, and the uint8 -> int8 conversion as the real run makes
    it after the fold (step x2), not of the unfolded per-channel pair (x40 on the narrow one)."""
    from qdq_optimizer.api import lint

    problems = lint(_net(), "tensorrt")
    fold = [p for p in problems if p.rule_id == "channel-scales"]
    conv = [p for p in problems if p.rule_id == "symmetric-int8" and "mid_Q" in p.node_names]
    assert len(fold) == 1 and len(conv) == 1
    assert "step x2.01" in conv[0].message, conv[0].message
    out, _ = optimize(_net(), "tensorrt")
    assert lint(out, "tensorrt") == []


def test_relu6_cap_the_quantizer_makes_redundant_is_dropped() -> None:
    """ReLU6 before a per-channel uint8 pair whose channels all end below 6 (255 x 0.02 = 5.1):
    the Q saturates each channel first, so the fold keeps the Clip's lower bound only."""
    out, rep = optimize(_net("Clip"), _only("channel-scales"), lint_result=False)
    assert rep.result("channel-scales").count == 1
    clip = next(n for n in out.graph.node if n.name == "act")
    assert clip.op_type == "Clip" and len(clip.input) == 2  # Clip(x, 0): a Relu
    # a cap of 2 that the values cross, over channels whose ranges end at 1.8: same integers
    m = _net("Clip2", scales=SCALES * np.float32(0.35))
    out, rep = optimize(m, _only("channel-scales"), lint_result=False)
    assert rep.result("channel-scales").count == 1
    before, after = _codes(m, gain=6.0), _codes(out, gain=6.0)
    assert np.array_equal(before, after) and np.all(before.max(axis=(0, 2, 3)) == 255)
