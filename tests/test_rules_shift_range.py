"""``shift-relu-range``: a Relu/ReLU6 output [0, a] is shifted by a/2 onto all the int8 codes (half
the step), through MaxPool / Concat / Resize to the convs that read it, whose biases (and, padded,
an int8 border term through DQ) take the shift out again."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from qdq_optimizer.actions.shift_range import _padded_taps_sum
from qdq_optimizer.api import lint, optimize
from qdq_optimizer.guard import without
from qdq_optimizer.ruleset import load_ruleset
from tests.rules_util import G, count, node, outputs, scales_of


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


def test_left_alone_for_other_readers_and_the_ignore_list() -> None:
    g = G(c=4, hw=6, seed=1)
    a = g.op("Relu", [g.conv(g.q("x", 0.03), k=1)], "act")
    exposed = g.model([g.conv(g.q(a, 0.02, "mid"), k=1, name="conv2"), a])  # a graph output
    for model, ignore in ((exposed, ()), (_net(), ("^conv2$",)), (_net(), ("^act$",))):
        out, rep = optimize(model, "tensorrt", ignore=ignore)
        assert rep.result("shift-relu-range").count == 0
        assert count(out, "Relu") == 1


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"pads": [2, 0, 1, 3], "strides": [2, 1]},
        {"pads": [2, 2, 2, 2], "dilations": [2, 2]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER"},
        {"pads": [1, 1, 1, 1], "group": 2},
    ],
)
def test_border_term_is_what_the_padding_takes_from_a_constant_input(attrs: dict) -> None:
    """The taps in the padding, against a brute-force conv of a constant input (ONNX's
    reference Conv): inside + padded = every tap, at every output position."""
    rng = np.random.default_rng(0)
    group = attrs.get("group", 1)
    w = rng.standard_normal((4, 4 // group, 3, 3))
    node = gs.Node("Conv", attrs={"kernel_shape": [3, 3], **attrs})
    padded = _padded_taps_sum(w, node, (7, 6))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], **attrs)
    inside = ReferenceEvaluator(conv).run(None, {"x": np.ones((1, 4, 7, 6)), "w": w})[0][0]
    assert padded.shape == inside.shape and np.abs(padded).max() > 0
    full = w.sum(axis=(1, 2, 3))[:, None, None]
    np.testing.assert_allclose(inside + padded, np.broadcast_to(full, inside.shape), atol=1e-9)


def test_padded_consumer_takes_the_border_back_through_an_int8_dq() -> None:
    m = _net(k2=3)
    out, rep = optimize(m, "tensorrt")
    res = rep.result("shift-relu-range")
    assert res.count == 1 and "border term" in res.changes[0].detail
    assert count(out, "Relu") == 0 and count(out, "Add") == 1
    add = next(n for n in out.graph.node if n.op_type == "Add")
    conv2 = node(out, "conv2")
    assert add.input[0] == conv2.output[0]  # the conv's output first: it sets the fusion's type
    dq = next(n for n in out.graph.node if n.output[0] == add.input[1])
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    assert dq.op_type == "DequantizeLinear" and consts[dq.input[0]].dtype == np.int8
    assert consts[dq.input[0]].shape == (1, 4, 6, 6) and consts[dq.input[1]].size == 1
    # the one activation pair is the only rounding the input has: the shifted one rounds finer
    twin = outputs(_without_mid_pair(m), _x())[0]
    before, after = _sqnr(twin, outputs(m, _x())[0]), _sqnr(twin, outputs(out, _x())[0])
    assert after > before + 3, (before, after)
    onnx.checker.check_model(out, full_check=True)
    assert lint(out, "tensorrt") == []
    _, again = optimize(out, "tensorrt")
    assert again.result("shift-relu-range").count == 0


def _component_net(
    quantize: bool = True, convt: bool = False, dynamic: bool = False, conv3_pair: bool = True
):
    """conv1 -> Relu -> pair -> MaxPool -> pair -> conv2 (3x3), and conv3 -> Relu -> linear
    Resize -> pair, concatenated with conv1's pair -> pair -> conv4 (3x3): one component of
    four pairs at one scale, two sources, two padded sinks (conv4 a ConvTranspose if asked)."""
    g = G(c=4, hw=8, seed=3)
    s = 0.1  # wide enough that nothing clips: the pairs only round
    pair = (lambda t, name: g.q(t, s, name)) if quantize else (lambda t, name: t)
    x = g.q("x", 0.03)
    a1 = g.op("Relu", [g.conv(x, k=3, name="conv1")], "act1")
    p1 = pair(a1, "p1")
    c2 = g.conv(pair(g.op("MaxPool", [p1], "pool", kernel_shape=[2, 2], strides=[2, 2]), "p2"), k=3)
    c2 = g.q(c2, 0.07) if conv3_pair else c2  # without: the component's pairs round alone
    a3 = g.op("Relu", [g.conv(c2, k=3, name="conv3")], "act3")
    scales = g.const(np.array([1, 1, 2, 2], np.float32))
    up = g.op("Resize", [a3, "", scales], "up", mode="linear")
    cat = pair(g.op("Concat", [p1, pair(up, "p3")], "cat", axis=1), "p4")
    if convt:
        w = g.weight(8, 4, 3)
        y = g.op("ConvTranspose", [cat, w], "conv4", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    else:
        y = g.conv(cat, cout=4, cin=8, k=3, name="conv4")
    hw = "h" if dynamic else 8
    return g.model([y], inputs={"x": [1, 4, hw, hw]})


def test_one_component_through_maxpool_concat_and_resize() -> None:
    m = _component_net()
    out, rep = optimize(m, "tensorrt")
    res = rep.result("shift-relu-range")
    assert res.count == 1, [c.detail for c in res.changes]
    assert "from 2 activation(s) through 4 pair(s)" in res.changes[0].detail
    assert count(out, "Relu") == 0 and count(out, "Add") == 2  # the two padded sinks
    scales = scales_of(out)
    assert sum(np.isclose(v, 0.05) for v in scales.values()) == 4
    onnx.checker.check_model(out, full_check=True)
    assert lint(out, "tensorrt") == []
    _, again = optimize(out, "tensorrt")
    assert again.result("shift-relu-range").count == 0
    # against the same net without the component's four pairs (the same rules applied), the
    # shifted pairs round finer than the unshifted ones
    m = _component_net(conv3_pair=False)
    out = optimize(m, "tensorrt")[0]
    twin = outputs(optimize(_component_net(False, conv3_pair=False), "tensorrt")[0], _x8())[0]
    unshifted, _ = optimize(m, without(load_ruleset("tensorrt"), ["shift-relu-range"]))
    before, after = _sqnr(twin, outputs(unshifted, _x8())[0]), _sqnr(twin, outputs(out, _x8())[0])
    assert after > before + 3, (before, after)


def _x8() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)}


def test_a_component_with_a_reader_that_cannot_take_the_offset_is_left_alone() -> None:
    for model in (_component_net(convt=True), _component_net(dynamic=True)):
        out, rep = optimize(model, "tensorrt")
        assert rep.result("shift-relu-range").count == 0
        assert count(out, "Relu") == 2


def test_chained_components_shift_through_a_border_add() -> None:
    """conv1 -> Relu -> pair -> conv2 (3x3) -> Relu -> pair -> conv3 (3x3): conv2 is the padded
    sink of one component and the source of the next (its Relu behind the border Add)."""
    g = G(c=4, hw=6, seed=2)
    a1 = g.op("Relu", [g.conv(g.q("x", 0.03), k=1)], "act1")
    a2 = g.op("Relu", [g.conv(g.q(a1, 0.02, "p1"), k=3, name="conv2")], "act2")
    m = g.model([g.conv(g.q(a2, 0.04, "p2"), k=3, name="conv3")])
    out, rep = optimize(m, "tensorrt")
    assert rep.result("shift-relu-range").count == 2
    assert count(out, "Relu") == 0 and count(out, "Add") == 2
    onnx.checker.check_model(out, full_check=True)
    assert lint(out, "tensorrt") == []
    _, again = optimize(out, "tensorrt")
    assert again.result("shift-relu-range").count == 0


def test_fp16_component_writes_fp16_constants() -> None:
    from onnx import TensorProto

    from tests.float_types import convert_float_type

    out, rep = optimize(convert_float_type(_component_net()), "tensorrt")
    assert rep.result("shift-relu-range").count == 1
    onnx.checker.check_model(out, full_check=True)
    resize_params = {n.input[2] for n in out.graph.node if n.op_type == "Resize"}
    fp32 = {
        t.name
        for t in out.graph.initializer
        if t.data_type == TensorProto.FLOAT and t.name not in resize_params
    }
    assert not fp32  # biases, Clip bounds, scales, the border term's scale: all fp16
    assert count(out, "Add") == 2
    y = outputs(out, {"x": _x8()["x"].astype(np.float16)})[0]
    assert y.dtype == np.float16 and np.isfinite(y).all()


def test_a_residual_skip_takes_the_offset_back_in_its_conv_branch() -> None:
    """Relu output -> pair -> conv2 (1x1), and the same tensor as the skip of Add(conv2, .):
    the branch conv's bias adds ``c`` back, so the Add's output is unchanged."""
    m = _net(skip=True)
    out, rep = optimize(m, "tensorrt")
    res = rep.result("shift-relu-range")
    assert res.count == 1 and count(out, "Relu") == 0
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    clip = next(n for n in out.graph.node if n.op_type == "Clip")
    c = -float(consts[clip.input[1]])
    conv2_in, conv2_out = node(m, "conv2"), node(out, "conv2")
    b_in = onnx.numpy_helper.to_array(
        next(t for t in m.graph.initializer if t.name == conv2_in.input[2])
    )
    w = outputs_weight(out, conv2_out)
    # +c for the shifted data input (c * sum W) and +c for the shifted skip
    np.testing.assert_allclose(
        consts[conv2_out.input[2]], b_in + c * w.reshape(4, -1).sum(1) + c, rtol=1e-5, atol=1e-5
    )
    onnx.checker.check_model(out, full_check=True)
    assert lint(out, "tensorrt") == []
    _, again = optimize(out, "tensorrt")
    assert again.result("shift-relu-range").count == 0


def outputs_weight(model: onnx.ModelProto, conv) -> np.ndarray:
    """The dequantized int8 weight a conv reads (per-channel DQ of an initializer)."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    q, s = consts[dq.input[0]].astype(np.float64), consts[dq.input[1]].astype(np.float64)
    return q * s.reshape(-1, 1, 1, 1)


def test_through_global_average_pool_into_a_gemm() -> None:
    """conv -> Relu -> GlobalAveragePool -> Flatten -> pair -> Gemm (a classifier's tail): the
    average carries the offset, the Gemm's bias takes it back (c * sum of each output's row)."""

    def net(quantize: bool) -> onnx.ModelProto:
        g = G(c=4, hw=6, seed=4)
        a = g.op("Relu", [g.conv(g.q("x", 0.03), k=3, name="conv1")], "act")
        f = g.op("Flatten", [g.op("GlobalAveragePool", [a], "gap")], "flat")
        f = g.q(f, 0.02, "p") if quantize else f
        wq = g.rng.integers(-127, 128, (3, 4)).astype(np.int8)
        ws = g.const(np.full(3, 0.004, np.float32))
        wz = g.const(np.zeros(3, np.int8))
        w2 = g.op("DequantizeLinear", [g.const(wq), ws, wz], "w2", axis=0)
        b = g.const(np.array([0.1, -0.2, 0.3], np.float32))
        return g.model([g.op("Gemm", [f, w2, b], "fc", transB=1)], inputs={"x": ["n", 4, 6, 6]})

    m = net(True)
    x = {"x": np.random.default_rng(5).standard_normal((256, 4, 6, 6)).astype(np.float32)}
    out, rep = optimize(m, "tensorrt")
    assert rep.result("shift-relu-range").count == 1, rep.result("shift-relu-range")
    assert count(out, "Relu") == 0
    onnx.checker.check_model(out, full_check=True)
    assert lint(out, "tensorrt") == []
    twin = outputs(optimize(net(False), "tensorrt")[0], x)[0]  # 256 samples: 1024 averages
    unshifted, _ = optimize(m, without(load_ruleset("tensorrt"), ["shift-relu-range"]))
    before, after = _sqnr(twin, outputs(unshifted, x)[0]), _sqnr(twin, outputs(out, x)[0])
    assert after > before + 3, (before, after)
    _, again = optimize(out, "tensorrt")
    assert again.result("shift-relu-range").count == 0


def test_average_pool_counting_zero_padding_does_not_carry_the_offset() -> None:
    from qdq_optimizer.commute import offset_inputs

    x = gs.Variable("x")
    plain = gs.Node("AveragePool", attrs={"kernel_shape": [2, 2]}, inputs=[x])
    padded = gs.Node(
        "AveragePool",
        attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        inputs=[x],
    )
    assert offset_inputs(plain) == [x] and offset_inputs(padded) == []


# ---------------------------------------------------------------------- hard-swish, SiLU ...
def _gated(g: G, h: str, form: str) -> str:
    """The activation ``form`` of ``h`` as exporters write it."""
    if form == "HardSwish":
        return g.op("HardSwish", [h], "act")
    if form == "hswish-decomposed":  # paddle2onnx / torch: x * Clip(x + 3, 0, 6) / 6
        gate = g.op(
            "Clip",
            [
                g.op("Add", [h, g.const(np.float32(3))]),
                g.const(np.float32(0)),
                g.const(np.float32(6)),
            ],
        )
        return g.op("Div", [g.op("Mul", [h, gate]), g.const(np.float32(6))], "act")
    if form == "SiLU":
        return g.op("Mul", [h, g.op("Sigmoid", [h])], "act")
    return g.op("LeakyRelu", [h], "act", alpha=0.1)


LEAST = {"HardSwish": -0.375, "hswish-decomposed": -0.375, "SiLU": -0.2784645}


def _gated_net(form: str, k2: int = 1, scale: float = 0.02) -> onnx.ModelProto:
    """x -> Q/DQ -> conv1 (1x1) -> act -> Q/DQ(scale) -> conv2 (k2 x k2)."""
    g = G(c=4, hw=6, seed=1)
    h = g.conv(g.q("x", 0.03), k=1)
    a = _gated(g, h, form)
    return g.model([g.conv(g.q(a, scale, "mid"), k=k2, name="conv2")], opset=14)


@pytest.mark.parametrize("k2", [1, 3])
@pytest.mark.parametrize("form", sorted(LEAST))
def test_gated_activation_is_shifted_by_a_new_add(form: str, k2: int) -> None:
    """[low, a] of a hard-swish or SiLU in any exporter's form: an Add(-c) after the activation
    (a pointwise op TensorRT fuses into the conv's epilogue with the activation) puts low on
    the lowest code and a on the highest; the consumer conv adds c back."""
    m = _gated_net(form, k2)
    out, rep = optimize(m, "tensorrt")
    res = rep.result("shift-relu-range")
    assert res.count == 1 and "by a new Add" in res.changes[0].detail, res.changes
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.name == "mid_Q")
    shift = next(n for n in out.graph.node if n.output[0] == q.input[0])
    assert shift.op_type == "Add"
    step = float(consts[q.input[1]])
    c = -float(consts[shift.input[1]])
    low = LEAST[form]
    # every code used: the lowest reaches low, the highest is the old top (127 s)
    assert c - 128 * step <= low + 1e-4 and c - 127 * step > low
    assert np.isclose(c + 127 * step, 127 * 0.02, rtol=1e-5)
    # zero is on a code: the many (near-)zero outputs keep no bias
    assert np.isclose(c / step, round(c / step), atol=1e-3)
    # the activation's output keeps its name and values (calibration ranges read them)
    assert shift.input[0] == "act_out"
    twin = outputs(_without_mid_pair(m), _x())[0]
    before, after = _sqnr(twin, outputs(m, _x())[0]), _sqnr(twin, outputs(out, _x())[0])
    # a step 1.75x finer is 4.9 dB on this pair; a padded conv's border term rounds on its own
    assert after > before + (3 if k2 == 1 else 2), (before, after)
    onnx.checker.check_model(out, full_check=True)
    assert lint(out, "tensorrt") == []
    _, again = optimize(out, "tensorrt")  # idempotent: its least value is now the lowest code
    assert again.result("shift-relu-range").count == 0


def test_an_activation_unbounded_below_is_left_alone() -> None:
    out, rep = optimize(_gated_net("LeakyRelu"), "tensorrt")
    assert rep.result("shift-relu-range").count == 0
    assert count(out, "Add") == 0


def test_a_gated_activation_on_the_ignore_list_is_left_alone() -> None:
    _, rep = optimize(_gated_net("SiLU"), "tensorrt", ignore=("^act$",))
    assert rep.result("shift-relu-range").count == 0


def test_fp16_gated_activation_is_shifted_with_fp16_constants() -> None:
    from onnx import TensorProto

    from tests.float_types import convert_float_type

    out, rep = optimize(convert_float_type(_gated_net("hswish-decomposed", k2=3)), "tensorrt")
    assert rep.result("shift-relu-range").count == 1
    onnx.checker.check_model(out, full_check=True)
    assert not [t.name for t in out.graph.initializer if t.data_type == TensorProto.FLOAT]
    y = outputs(out, {"x": _x()["x"].astype(np.float16)})[0]
    assert y.dtype == np.float16 and np.isfinite(y).all()


def test_padded_sinks_false_leaves_padded_components_alone(tmp_path) -> None:
    """A rule set that redefines the rule with ``padded_sinks: false`` writes no border
    constants: the padded component stays as it was, an unpadded one is still shifted."""
    rules = tmp_path / "noborder.yaml"
    rules.write_text(
        "name: noborder\nextends: tensorrt\nrules:\n"
        "  - id: shift-relu-range\n    why: no border constants\n"
        "    match: {op: QuantizeLinear, inputs: [{constant: false}]}\n"
        "    action: shift_one_sided\n    params: {padded_sinks: false}\n"
    )
    ruleset = load_ruleset(str(rules))
    _, padded = optimize(_gated_net("SiLU", k2=3), ruleset)
    assert padded.result("shift-relu-range").count == 0
    _, unpadded = optimize(_gated_net("SiLU", k2=1), ruleset)
    assert unpadded.result("shift-relu-range").count == 1
