"""``pointwise``: the one tensor an elementwise chain is a function of, and the chain's least
value, for activations in the forms exporters write."""

from __future__ import annotations

import numpy as np
import pytest

from qdq_optimizer.graph import QGraph
from qdq_optimizer.pointwise import least_value, scalar_chain
from tests.rules_util import G


def _chain_graph(form: str, dtype=np.float32) -> tuple[QGraph, str]:
    g = G(c=2, hw=4)
    h = g.conv("x", k=1, form="float")

    def k(v: float) -> str:
        return g.const(np.asarray(v, np.float32))

    if form == "Relu":
        y = g.op("Relu", [h])
    elif form == "HardSwish":
        y = g.op("HardSwish", [h])
    elif form == "x*HardSigmoid":
        y = g.op("Mul", [h, g.op("HardSigmoid", [h], alpha=1 / 6, beta=0.5)])
    elif form == "SiLU":
        y = g.op("Mul", [h, g.op("Sigmoid", [h])])
    elif form == "hswish-paddle":  # Div(Mul(x, Clip(Add(x, DQ(3)), 0, 6)), 6), clamped by a rule
        three = g.op("DequantizeLinear", [g.const(np.int8(96)), k(1 / 32), g.const(np.int8(0))])
        sat = g.op("Clip", [h, k(-20.0), k(20.0)])
        gate = g.op("Clip", [g.op("Add", [sat, three]), k(0.0), k(6.0)])
        y = g.op("Div", [g.op("Mul", [sat, gate]), k(6.0)])
    elif form == "GELU":  # x * 0.5 * (1 + erf(x / sqrt 2))
        erf = g.op("Erf", [g.op("Div", [h, k(np.sqrt(2))])])
        y = g.op("Mul", [g.op("Mul", [h, k(0.5)]), g.op("Add", [erf, k(1.0)])])
    elif form == "LeakyRelu":
        y = g.op("LeakyRelu", [h], alpha=0.1)
    elif form == "residual":  # Relu(Add(conv1, conv2)): two tensors, the Relu alone
        y = g.op("Relu", [g.op("Add", [h, g.conv("x", k=1, form="float")])])
    else:
        raise AssertionError(form)
    return QGraph.from_model(g.model([y], opset=14)), y


EXPECTED = {
    "Relu": 0.0,
    "HardSwish": -0.375,
    "x*HardSigmoid": -0.375,
    "SiLU": -0.2784645,
    "hswish-paddle": -0.375,
    "GELU": -0.1700406,
}


@pytest.mark.parametrize("form", sorted(EXPECTED))
def test_least_value_of_each_exporters_form(form: str) -> None:
    graph, y = _chain_graph(form)
    t = graph.tensor(y)
    root, nodes = scalar_chain(graph, t)
    assert graph.producer(root).op == "Conv"
    assert np.isclose(least_value(graph, root, nodes, t), EXPECTED[form], atol=5e-4)


def test_a_chain_still_falling_in_its_tails_has_no_bound() -> None:
    graph, y = _chain_graph("LeakyRelu")
    t = graph.tensor(y)
    assert least_value(graph, *scalar_chain(graph, t), t) is None


def test_a_relu_after_two_tensors_is_a_chain_of_one_op() -> None:
    graph, y = _chain_graph("residual")
    t = graph.tensor(y)
    root, nodes = scalar_chain(graph, t)
    assert [n.op for n in nodes] == ["Relu"] and graph.producer(root).op == "Add"
    assert least_value(graph, root, nodes, t) == 0.0


def test_a_conv_output_is_no_chain() -> None:
    g = G(c=2, hw=4)
    y = g.conv("x", k=1, form="float")
    graph = QGraph.from_model(g.model([y]))
    assert scalar_chain(graph, graph.tensor(y)) is None
