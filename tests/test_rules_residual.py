"""Rule 2: residual Adds are recognised by structure, not names."""

from __future__ import annotations

import pytest

from qdq_optimizer.api import optimize
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
