"""Scale groups: union-find over Concat, MaxPool, commuting ops and Q/DQ pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qdq_optimizer.api import quantizer_groups
from qdq_optimizer.scale_groups import scale_groups
from tests.rules_util import G, qgraph

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def test_transitive_chain_concat_maxpool_concat_is_one_group() -> None:
    g = G()
    a, b = g.op("Relu", ["x"], "ra"), g.op("Relu", ["x"], "rb")
    cat = g.op("Concat", [a, b], "cat1", axis=1)
    mp = g.op("MaxPool", [cat], "mp", kernel_shape=[1, 1])
    y1, y2, y3 = g.q(a, 0.1, "qa"), g.q(mp, 0.2, "qmp"), g.q(b, 0.3, "qb")
    out = g.op("Concat", [y1, y2, y3], "cat2", axis=1)
    m = g.model([out])
    assert quantizer_groups(m) == [["qa_Q", "qmp_Q", "qb_Q"]]


def test_groups_follow_the_rule_set(tmp_path: Path) -> None:
    """The trainer ties what the rule set will unify: nothing for a set without scale-groups."""
    g = G()
    a, b = g.op("Relu", ["x"], "ra"), g.op("Relu", ["x"], "rb")
    out = g.op("Concat", [g.q(a, 0.1, "qa"), g.q(b, 0.3, "qb")], "cat", axis=1)
    m = g.model([out])
    assert quantizer_groups(m, rules="yolov7") == [["qa_Q", "qb_Q"]]
    assert quantizer_groups(m, rules="cleanup") == []
    no_groups = tmp_path / "no-groups.yaml"
    no_groups.write_text("name: no-groups\nextends: tensorrt\ndisable: [scale-groups]\n")
    assert quantizer_groups(m, rules=str(no_groups)) == []


def test_every_q_reading_one_tensor_is_grouped_and_singletons_are_not_listed() -> None:
    g = G()
    r = g.op("Relu", ["x"], "r")
    c1 = g.conv(g.q(r, 0.1, "first"), name="c1")
    c2 = g.conv(g.q(r, 0.2, "second"), name="c2")
    c3 = g.conv(g.q(c1, 0.3, "alone"), name="c3")
    m = g.model([c2, c3])
    assert quantizer_groups(m) == [["first_Q", "second_Q"]]


@pytest.mark.parametrize(
    "build, joined",
    [
        (lambda g, x: g.op("Pad", [x, g.const(np.zeros(8, np.int64))], mode="constant"), True),
        (
            lambda g, x: g.op(
                "Pad", [x, g.const(np.zeros(8, np.int64)), g.const(np.float32(1))], mode="constant"
            ),
            False,
        ),
        (lambda g, x: g.op("Pad", [x, g.const(np.zeros(8, np.int64))], mode="reflect"), False),
        (
            lambda g, x: g.op(
                "Resize", [x, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest"
            ),
            True,
        ),
        (
            lambda g, x: g.op(
                "Resize", [x, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="linear"
            ),
            False,
        ),
        (lambda g, x: g.op("Transpose", [x], perm=[0, 1, 3, 2]), True),
        (lambda g, x: g.op("Sigmoid", [x]), False),
        (lambda g, x: g.op("MaxPool", [x], kernel_shape=[1, 1]), True),
    ],
)
def test_which_ops_join_their_input_and_output(build, joined: bool) -> None:
    g = G()
    r = g.op("Relu", ["x"], "r")
    mid = build(g, r)
    a = g.conv(g.q(r, 0.1, "in"), name="ca")
    b = g.conv(g.q(mid, 0.2, "out"), name="cb")
    groups = quantizer_groups(g.model([a, b]))
    assert (groups == [["in_Q", "out_Q"]]) is joined


def test_maxpool_with_non_positive_scale_does_not_join() -> None:
    g = G()
    r = g.op("Relu", ["x"], "r")
    mp = g.op("MaxPool", [r], "mp", kernel_shape=[1, 1])
    a = g.conv(g.q(r, 0.1, "in"), name="ca")
    b = g.conv(g.q(mp, -0.2, "out"), name="cb")
    assert quantizer_groups(g.model([a, b])) == []


def test_q_dq_pair_joins_the_float_tensor_and_its_dequantized_copy() -> None:
    g = G()
    r = g.op("Relu", ["x"], "r")
    d = g.q(r, 0.1, "p")  # ORT style: DQ output feeds the concat
    other = g.op("Relu", ["x"], "r2")
    cat = g.op("Concat", [d, g.q(other, 0.3, "p2")], "cat", axis=1)
    out = g.conv(g.q(cat, 0.5, "post"), cout=2, cin=4)
    assert quantizer_groups(g.model([out])) == [["p_Q", "p2_Q", "post_Q"]]


def test_groups_are_deterministic_and_topological() -> None:
    m = onnx.load(FIXTURES / "yolov7-naive.onnx")
    first = quantizer_groups(m)
    assert first == quantizer_groups(m)
    order = {n.name: i for i, n in enumerate(m.graph.node)}
    for grp in first:
        assert [order[n] for n in grp] == sorted(order[n] for n in grp)
    assert [order[g[0]] for g in first] == sorted(order[g[0]] for g in first)


def test_yolov7_head_concats_share_one_group() -> None:
    """The seed's pairwise overwrite leaves two head concats with two scales; union-find joins
    every concat chained through shared tensors into one group."""
    graph = qgraph(onnx.load(FIXTURES / "yolov7-naive.onnx"))
    groups = scale_groups(graph)
    multi = [g for g in groups if sum(op.op == "Concat" for op in g.ops) >= 2]
    assert multi, "expected a group spanning several concats"
    spp = next(g for g in groups if sum(op.op == "MaxPool" for op in g.ops) >= 3)
    assert spp.has("Concat")
