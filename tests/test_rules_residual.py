"""Rule 2: residual Adds are recognised by structure, not names."""

from __future__ import annotations

import numpy as np
import pytest

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.graph import QGraph
from qdq_optimizer.trt_patterns import residual_inputs
from tests.rules_util import G, node, scales_of


def block(skip_first: bool, names: dict[str, str], branch_q: bool = False) -> tuple:
    """x -> Relu -> [Q/DQ -> conv -> relu -> conv -> relu] + skip; Add input order varies."""
    g = G(seed=7)
    x = g.op("Relu", ["x"], names["relu"])
    c1 = g.op("Relu", [g.conv(g.q(x, 0.04, names["q1"]), name=names["c1"])])
    c2 = g.op("Relu", [g.conv(g.q(c1, 0.06), name=names["c2"])])
    if branch_q:
        c2 = g.q(c2, 0.08, "branchq")
    ins = [x, c2] if skip_first else [c2, x]
    add = g.op("Add", ins, names["add"])
    out = g.conv(g.q(add, 0.1, "after"), name="post")
    return g.model([out]), names


NAMES = [
    {"relu": "r", "q1": "q1", "c1": "c1", "c2": "c2", "add": "add"},
    # misleading names: the skip is called 'branch' and the convs 'skip'
    {
        "relu": "branch",
        "q1": "skipq",
        "c1": "skip_conv",
        "c2": "skip_conv2",
        "add": "shortcut_branch",
    },
]


@pytest.mark.parametrize("skip_first", [True, False])
@pytest.mark.parametrize("names", NAMES)
@pytest.mark.parametrize("branch_q", [False, True])
def test_skip_gets_dq_with_existing_scale_and_branch_loses_qdq(skip_first, names, branch_q) -> None:
    m, names = block(skip_first, names, branch_q)
    add = names["add"]
    split = residual_inputs(QGraph.from_model(m), QGraph.from_model(m).node(add))
    assert split == ((1, 0) if skip_first else (0, 1))
    out, rep = optimize(m, "tensorrt")
    prod = {o: n for n in out.graph.node for o in n.output}
    a = node(out, add)
    skip_in = a.input[0 if skip_first else 1]
    branch_in = a.input[1 if skip_first else 0]
    assert prod[skip_in].op_type == "DequantizeLinear"
    assert prod[branch_in].op_type == "Relu"
    q = prod[prod[skip_in].input[0]]
    # the skip's Q is the conv's input quantizer (merged duplicate): one scale for one tensor
    assert q.name == f"{names['q1']}_Q"
    assert scales_of(out)[q.name] == pytest.approx(0.04)
    assert "after_Q" in scales_of(out)  # the Q after the Add stays: a conv reads it
    assert rep.result("residual-add").count == (2 if branch_q else 1)


def test_both_inputs_conv_branches_skip_is_the_common_ancestor() -> None:
    """ResNet-style: the skip is itself a conv-activation output; the branch descends from it."""
    g = G(seed=1)
    x = g.op("Relu", [g.conv(g.q("x", 0.02), name="stem")], "x")
    b = g.op(
        "Relu", [g.conv(g.q(g.op("Relu", [g.conv(g.q(x, 0.05), name="b1")]), 0.05), name="b2")]
    )
    add = g.op("Add", [b, x], "add")
    m = g.model([g.conv(g.q(add, 0.1))])
    graph = QGraph.from_model(m)
    assert residual_inputs(graph, graph.node("add")) == (0, 1)


def test_add_of_two_unrelated_float_tensors_is_not_residual() -> None:
    g = G()
    add = g.op("Add", [g.op("Relu", ["x"]), g.op("Sigmoid", ["x"])], "add")
    m = g.model([add])
    graph = QGraph.from_model(m)
    assert residual_inputs(graph, graph.node("add")) is None
    out, rep = optimize(m, "tensorrt")
    assert rep.result("residual-add").count == 0


def test_no_quantizer_to_copy_is_noted_not_invented() -> None:
    g = G()
    x = g.op("Relu", ["x"], "x")
    c = g.op("Relu", [g.conv(g.q(g.op("Sigmoid", [x]), 0.05), name="c")])
    add = g.op("Add", [c, x], "add")
    out, rep = optimize(g.model([add]), "tensorrt")
    assert rep.result("residual-add").count == 0
    assert any("no quantizer" in n for n in rep.result("residual-add").notes)


# ------------------------------------------------------------------ exact fusion target (issue 10.4)
def split_of(m, add: str = "add"):
    graph = QGraph.from_model(m)
    return residual_inputs(graph, graph.node(add))


def producers(m) -> dict:
    return {o: n for n in m.graph.node for o in n.output}


def test_hard_swish_add_of_a_constant_is_not_residual() -> None:
    """The exporter's decomposed hard-swish: Add(y, 3) -> Clip(0, 6) -> Mul(y, .) -> Div(6)."""
    g = G()
    y = g.conv(g.q("x", 0.05), name="conv")
    a = g.op("Add", [y, g.const(np.float32(3.0))], "add")
    c = g.op("Clip", [a, g.const(np.float32(0.0)), g.const(np.float32(6.0))])
    hs = g.op("Div", [g.op("Mul", [y, c]), g.const(np.float32(6.0))])
    m = g.model([g.conv(g.q(hs, 0.1), name="next")])
    assert split_of(m) is None
    out, rep = optimize(m, "tensorrt")
    assert rep.result("residual-add").count == 0
    assert producers(out)[node(out, "add").input[0]].op_type == "Conv"


def siblings(skip_q: str | None, seed: int = 3, sum_q: bool = True):
    """RepC3/C2f-style: two conv branches of one input meet in an Add (no branch descends from
    the other); ``skip_q`` names the inputs that already have a quantizer ('a', 'b', 'ab', '')."""
    g = G(seed=seed)
    x = g.op("Relu", ["x"], "x_relu")
    xq = g.q(x, 0.05, "xin")
    a = g.op("Relu", [g.conv(xq, name="conv_a")], "relu_a")
    b = g.op("Relu", [g.conv(xq, name="conv_b")], "relu_b")
    if "a" in skip_q:
        a = g.q(a, 0.07, "skipq" if skip_q == "a" else "qa")
    if "b" in skip_q:
        b = g.q(b, 0.07, "skipq" if skip_q == "b" else "qb")
    add = g.op("Add", [a, b], "add")
    if not sum_q:  # the sum is read in float only (a graph output)
        return g.model([add])
    return g.model([g.conv(g.q(add, 0.1, "after"), name="post")])


def test_sibling_conv_branches_choose_deterministically_and_stay() -> None:
    m = siblings("ab")
    first = split_of(m)
    assert first == split_of(siblings("ab")) and first is not None
    assert split_of(siblings("")) == first  # the same choice without quantizers
    out, rep = optimize(m, "tensorrt")
    assert rep.result("residual-add").count == 1  # the conv-branch pair goes
    prod = producers(out)
    add = node(out, "add")
    kinds = [prod[t].op_type for t in add.input]
    assert sorted(kinds) == ["DequantizeLinear", "Relu"]
    # stable: on the result the same input is the conv branch, and a second run changes nothing
    assert split_of(out) == first
    again, rep2 = optimize(out, "tensorrt")
    assert rep2.total_changes == 0


@pytest.mark.parametrize("skip", ["a", "b"])
def test_a_right_placement_between_sibling_branches_is_kept(skip: str) -> None:
    """ModelOpt quantizes one of two sibling branches: either choice is a fusable placement, so
    it stays (the old branch-depth count removed those quantizers and lint was silent)."""
    m = siblings(skip)
    assert split_of(m) == ((0, 1) if skip == "b" else (1, 0))
    out, rep = optimize(m, "tensorrt")
    assert rep.result("residual-add").count == 0
    assert "skipq_Q" in {n.name for n in out.graph.node}
    assert not [p for p in rep.remaining_problems if p.rule_id == "residual-add"]


def test_a_skip_with_no_quantizer_to_copy_is_reported_as_left() -> None:
    """Neither sibling nor the sum has a quantizer to take a scale from: the rule cannot fix the
    Add, and says so (lint and optimize's remaining problems) instead of staying silent."""
    m = siblings("", sum_q=False)
    out, rep = optimize(m, "tensorrt")
    left = [p for p in rep.remaining_problems if p.rule_id == "residual-add"]
    assert len(left) == 1 and left[0].node_names == ["add"] and "no quantizer" in left[0].message
    lint_left = [p for p in lint(m, "tensorrt") if p.rule_id == "residual-add"]
    assert [p.message for p in lint_left] == [left[0].message]


@pytest.mark.parametrize("through_relu", [False, True])
def test_a_skip_with_no_own_quantizer_borrows_the_sums_scale(through_relu: bool) -> None:
    """C2PSA from pytorch-quantization/NNCF: nothing quantizes the skip, but a Q reads the sum
    (directly, or after a Relu as in a ResNet block); the fused kernel re-quantizes the sum at that
    scale, so the skip takes it, with the borrowed-scale warning, and the result is lint-clean."""
    g = G(seed=3)
    x = g.op("Relu", ["x"], "x_relu")
    xq = g.q(x, 0.05, "xin")
    a = g.op("Relu", [g.conv(xq, name="conv_a")], "relu_a")
    b = g.op("Relu", [g.conv(xq, name="conv_b")], "relu_b")
    s = g.op("Add", [a, b], "add")
    if through_relu:
        s = g.op("Relu", [s], "sum_relu")
    m = g.model([g.conv(g.q(s, 0.1, "after"), name="post")])
    out, rep = optimize(m, "tensorrt")
    assert not rep.remaining_problems
    add = node(out, "add")
    prod = producers(out)
    dqs = [prod[t] for t in add.input if prod[t].op_type == "DequantizeLinear"]
    assert len(dqs) == 1
    assert scales_of(out, "DequantizeLinear")[dqs[0].name] == pytest.approx(0.1)
    assert any("borrowed" in w for w in rep.warnings)
    assert lint(out, "tensorrt") == []


@pytest.mark.parametrize("joiner", ["Concat", "MaxPool"])
def test_skip_from_a_concat_or_maxpool(joiner: str) -> None:
    g = G(seed=5)
    x = g.op("Relu", ["x"], "x_relu")
    if joiner == "Concat":
        s = g.op("Concat", [x, x], "join", axis=1)
        cin = 2 * g.c
    else:
        s = g.op("MaxPool", [x], "join", kernel_shape=[1, 1])
        cin = g.c
    br = g.op("Relu", [g.conv(g.q(s, 0.05, "sq"), cin=cin, cout=cin, name="conv")], "branch")
    add = g.op("Add", [s, br], "add")
    m = g.model([g.conv(g.q(add, 0.1), cin=cin, name="post")])
    assert split_of(m) == (1, 0)
    out, _ = optimize(m, "tensorrt")
    prod = producers(out)
    a = node(out, "add")
    assert prod[a.input[0]].op_type == "DequantizeLinear"
    assert prod[a.input[1]].op_type == "Relu"


def test_add_of_one_tensor_with_itself_is_not_residual() -> None:
    g = G()
    y = g.op("Relu", [g.conv(g.q("x", 0.05), name="conv")])
    m = g.model([g.conv(g.q(g.op("Add", [y, y], "add"), 0.1))])
    assert split_of(m) is None
    assert optimize(m, "tensorrt")[1].result("residual-add").count == 0


def test_a_conv_whose_output_is_read_elsewhere_is_not_the_branch() -> None:
    """The value a fused Add consumes is never materialised: a conv output with another reader
    cannot take the Add, so it is the skip even though it ends in a conv epilogue."""
    g = G(seed=2)
    c1 = g.op("Relu", [g.conv(g.q("x", 0.05), name="c1")], "r1")
    c2 = g.op("Relu", [g.conv(g.q("x", 0.05), name="c2")], "r2")
    add = g.op("Add", [c1, c2], "add")
    other = g.op("Sigmoid", [c1], "other")  # c1's value is also needed here
    m = g.model([g.conv(g.q(add, 0.1)), other])
    assert split_of(m) == (1, 0)
