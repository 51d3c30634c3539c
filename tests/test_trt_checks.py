"""Each TensorRT lint check fires on a graph that breaks its fact and not on the fixed graph."""

from __future__ import annotations

import re

import numpy as np
import pytest

from qdq_optimizer.trt_checks import check_graph
from tests.rules_util import G, qgraph


def ids(model, ignore=()) -> list[str]:
    return sorted({p.rule_id for p in check_graph(qgraph(model), ignore)})


def conv_act(g: G, x: str, act: str, between: float | None, name: str) -> str:
    y = g.conv(g.q(x, 0.05), name=name)
    if between is not None:
        y = g.q(y, between)
    if act == "silu":
        s = g.op("Sigmoid", [y])
        return g.op("Mul", [y, s])
    return g.op(act, [y])


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "HardSwish", "silu"])
def test_qdq_between_conv_and_activation(act: str) -> None:
    bad, good = G(), G()
    for g, between in ((bad, 0.1), (good, None)):
        y = conv_act(g, "x", act, between, "conv")
        y = g.conv(g.q(y, 0.1), name="next")
        g.model_ = g.model([y], opset=14)
    # the pair is also an output quantization nothing INT8 reads: both facts hold
    assert ids(bad.model_) == ["trt-epilogue-qdq", "trt-weighted-output"]
    assert ids(good.model_) == []


def test_qdq_inside_silu() -> None:
    g = G()
    y = g.conv(g.q("x", 0.05), name="conv")
    s = g.q(g.op("Sigmoid", [y]), 0.01)
    out = g.conv(g.q(g.op("Mul", [y, s]), 0.1))
    assert ids(g.model([out])) == ["trt-epilogue-qdq", "trt-float-island"]


def test_weighted_input_not_quantized() -> None:
    g = G()
    a = g.conv(g.q("x", 0.05), form="float", name="weight_float")
    b = g.conv(a, form="int8", name="data_float")
    problems = check_graph(qgraph(g.model([b])))
    assert {(p.rule_id, p.node_names[0]) for p in problems} == {
        ("trt-weighted-input", "weight_float"),
        ("trt-weighted-input", "data_float"),
    }


def test_concat_scales_must_agree_across_the_group() -> None:
    g = G()
    a = g.op("Relu", ["x"])
    b = g.op("Relu", ["x"])
    c1 = g.conv(g.q(a, 0.1, "qa"))
    cat = g.op("Concat", [a, b], axis=1)
    c2 = g.conv(g.q(cat, 0.2, "qcat"), cin=4)
    problems = check_graph(qgraph(g.model([c1, c2])))
    assert [p.rule_id for p in problems] == ["trt-scale-group"]
    assert set(problems[0].node_names) == {"qa_Q", "qcat_Q"}


def test_maxpool_scales_and_sign() -> None:
    # unequal positive scales are one problem, the MaxPool's scale group's (not also a MaxPool one)
    for scale, expect in ((0.1, []), (0.2, ["trt-scale-group"])):
        g = G()
        r = g.op("Relu", ["x"])
        mp = g.op("MaxPool", [g.q(r, 0.1)], kernel_shape=[1, 1])
        out = g.conv(g.q(mp, scale))
        assert ids(g.model([out])) == expect
    g = G()
    mp = g.op("MaxPool", [g.q(g.op("Relu", ["x"]), -0.1)], kernel_shape=[1, 1])
    assert "trt-maxpool-scale" in ids(g.model([g.conv(g.q(mp, -0.1))]))


def residual(branch_q: bool, skip_q: bool) -> G:
    g = G()
    x = g.op("Relu", ["x"], "x_relu")
    y = g.op("Relu", [g.conv(g.q(x, 0.1), name="branch_conv")])
    if branch_q:
        y = g.q(y, 0.2)
    s = g.q(x, 0.1) if skip_q else x
    g.out_ = g.op("Add", [y, s], "add")
    return g


@pytest.mark.parametrize(
    "branch_q, skip_q, n", [(False, True, 0), (True, True, 1), (False, False, 1), (True, False, 2)]
)
def test_residual_add(branch_q: bool, skip_q: bool, n: int) -> None:
    g = residual(branch_q, skip_q)
    out = g.conv(g.q(g.out_, 0.3))
    problems = [p for p in check_graph(qgraph(g.model([out]))) if p.rule_id == "trt-residual-add"]
    assert len(problems) == n


def test_weighted_output_and_float_island() -> None:
    g = G()
    y = g.conv(g.q("x", 0.05), name="conv")
    y = g.q(y, 0.1, "convout")
    y = g.op("Softmax", [y], axis=1)
    y = g.q(y, 0.01, "soft")
    out = g.op("Sigmoid", [y])
    assert ids(g.model([out])) == ["trt-float-island", "trt-weighted-output"]


def test_asymmetric_and_uint8_are_reported() -> None:
    g = G()
    y = g.conv(g.q("x", 0.05, dtype=np.uint8))
    assert "trt-qdq-type" in ids(g.model([y]))


def test_ignore_list_silences_nodes_by_module_path() -> None:
    g = G()
    y = g.conv(g.q("x", 0.05), form="float", name="/model.105/m.0/Conv")
    assert ids(g.model([y])) == ["trt-weighted-input"]
    # ignored, the conv is float: its input Q/DQ is then a Reformat for nothing
    assert ids(g.model([y]), [re.compile(r"model\.105\.m\.(.*)")]) == ["trt-float-island"]


@pytest.mark.parametrize(
    "op, attrs, commutes",
    [
        ("Resize", {"mode": "nearest"}, True),
        ("Resize", {"mode": "linear"}, False),  # interpolates: the DQ does not propagate
        ("Pad", {"mode": "constant"}, True),
        ("Pad", {"mode": "reflect"}, False),
        ("Reshape", {}, True),
        ("AveragePool", {"kernel_shape": [1, 1]}, False),  # INT8 consumer, not a commuting op
    ],
)
def test_one_commute_predicate_for_int8_tensors_and_scale_groups(op, attrs, commutes) -> None:
    """is_int8_tensor walks the commute predicate scale groups use (they once disagreed: a
    linear Resize counted as INT8 for one and not for the other)."""
    from qdq_optimizer.commute import is_int8_tensor, joining_inputs
    from qdq_optimizer.scale_groups import scale_groups

    g = G()
    x = g.q(g.op("Relu", ["x"]), 0.1, "in")
    if op == "Resize":
        y = g.op(op, [x, "", g.const(np.array([1, 1, 2, 2], np.float32))], "op", **attrs)
    elif op == "Pad":
        y = g.op(op, [x, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], "op", **attrs)
    elif op == "Reshape":
        y = g.op(op, [x, g.const(np.array([1, -1], np.int64))], "op")
    else:
        y = g.op(op, [x], "op", **attrs)
    graph = qgraph(g.model([g.op("Relu", [y])]))
    node = graph.node("op")
    assert bool(joining_inputs(graph, node)) is commutes
    assert is_int8_tensor(graph, node.outputs[0]) is commutes
    joined = any(
        node.outputs[0] in grp.tensors and node.inputs[0] in grp.tensors
        for grp in scale_groups(graph)
    )
    assert joined is commutes


def test_lint_reports_a_float_weight_under_int8_data_once() -> None:
    """``trt-weighted-input`` is wider than ``quantize-float-weights``: where the rule quantizes
    the weights, lint reports the problem once, under the rule's id; INT8 weights under a float
    data input (no rule fixes that) stay the check's."""
    from qdq_optimizer import api

    g = G()
    a = g.conv(g.q("x", 0.05), form="float", name="weight_float")
    b = g.conv(a, form="int8", name="data_float")
    problems = api.lint(g.model([b]), "tensorrt")
    by_node: dict[str, list[str]] = {}
    for p in problems:
        for n in p.node_names:
            by_node.setdefault(n, []).append(p.rule_id)
    assert by_node["weight_float"] == ["quantize-float-weights"]
    assert by_node["data_float"] == ["trt-weighted-input"]


def test_per_tensor_int8_weights_warn_once_and_do_not_fail_lint() -> None:
    """``trt-weight-per-tensor``: int8 weights with one scale whose typical output channel keeps
    under 64 of its 127 codes get one warning for the graph, never a problem."""
    from qdq_optimizer.api import lint_report
    from tests.test_rules_weighted import _ct_weight, _per_tensor, _weighted_graph

    narrow = np.moveaxis(_ct_weight(cin=4, cout=6), 1, 0).copy()
    rep = lint_report(_weighted_graph("Conv", narrow, _per_tensor(narrow), 0))
    warns = [p for p in rep.lint_warnings if p.rule_id == "trt-weight-per-tensor"]
    assert len(warns) == 1 and warns[0].node_names == ["op"]
    assert "1 of 1 weighted ops" in warns[0].message and "'op' channel 0" in warns[0].message
    assert not [p for p in rep.problems if p.rule_id == "trt-weight-per-tensor"]
    per_channel = (np.abs(narrow).reshape(6, -1).max(1) / 127).astype(np.float32)
    rep = lint_report(_weighted_graph("Conv", narrow, per_channel, 0))
    assert not [p for p in rep.lint_warnings if p.rule_id == "trt-weight-per-tensor"]
