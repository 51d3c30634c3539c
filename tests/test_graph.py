"""QGraph: the index stays right through edits, edits are exact, nothing is quadratic or recursive."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper
from qdq_builders import Builder, messy_model  # noqa: I001  (tests/ is on sys.path)

from qdq_optimizer.commute import is_int8_tensor
from qdq_optimizer.graph import QGraph, _toposort
from qdq_optimizer.runtime import run


@pytest.fixture(scope="module")
def messy() -> onnx.ModelProto:
    return messy_model()


def _by_name(g: QGraph, name: str):
    return g.node(name)


def test_producer_consumers_and_qdq_helpers(messy):
    g = QGraph.from_model(messy)
    q, dq = g.node("left_in_Q"), g.node("left_in_DQ")
    assert g.producer(dq.inputs[0]) is q
    assert dq in g.consumers(q.outputs[0])
    assert g.qdq_pair_on(dq.outputs[0]) == (q, dq)
    relu_out = q.inputs[0]
    assert {n.name for n in g.quantizers_of(relu_out)} == {"left_in_Q", "right_in_Q"}
    p = g.qparams(q)
    assert p.dtype == TensorProto.INT8 and not p.per_axis and float(p.scale) == pytest.approx(0.03)
    w = g.qparams(g.node("left_wDQ"))
    assert w.per_axis and w.axis == 0 and w.scale.shape == (8,)
    assert p.same_as(g.qparams(g.node("right_in_Q")))
    assert not p.same_as(g.qparams(g.node("stem_in_Q")))


def test_is_int8_tensor_follows_commuting_ops():
    b = Builder()
    x = b.input("x", [1, 4, 8, 8])
    y = b.qdq(x, 0.1, name="in")
    mp = b.node("MaxPool", [y], name="mp", kernel_shape=[2, 2], strides=[2, 2])
    r = b.node("Relu", [mp], name="relu")
    b.output(r)
    g = QGraph.from_model(b.build())
    assert is_int8_tensor(g, g.node("mp").outputs[0])
    assert not is_int8_tensor(g, g.node("relu").outputs[0])
    assert not is_int8_tensor(g, g.tensor("x"))


def test_topo_order_is_deterministic_and_nodes_of_is_ordered(messy):
    g1, g2 = QGraph.from_model(messy), QGraph.from_model(messy)
    assert [n.name for n in g1.topo_nodes()] == [n.name for n in g2.topo_nodes()]
    qs = [n.name for n in g1.nodes_of("QuantizeLinear")]
    assert qs == [n.name for n in g1.topo_nodes() if n.op == "QuantizeLinear"]
    both = list(g1.nodes_of("Conv", "Relu"))
    assert [g1.position(n) for n in both] == sorted(g1.position(n) for n in both)


def test_toposort_reports_cycle():
    a = gs.Variable("a")
    b_ = gs.Variable("b")
    n1 = gs.Node("Relu", "n1", inputs=[a], outputs=[b_])
    n2 = gs.Node("Relu", "n2", inputs=[b_], outputs=[a])
    with pytest.raises(ValueError, match="cycle"):
        _toposort([n1, n2])


def test_insert_then_bypass_qdq_round_trip_is_exact(messy):
    g = QGraph.from_model(messy)
    relu = g.node("c1_act")
    before = len(g.nodes)
    q, dq, out = g.insert_qdq(relu.outputs[0], np.float32(0.5), consumers=[])
    assert g.contains(q) and g.contains(dq) and len(g.nodes) == before + 2
    assert out.outputs == []  # no consumer asked for
    assert g.drop_if_unused(dq) and g.drop_if_unused(q)
    assert not g.contains(q) and len(g.nodes) == before
    ref = run(messy)
    assert np.array_equal(run(g.to_model())["head_out"], ref["head_out"])


def test_insert_qdq_changes_numbers_and_bypass_restores_them(messy):
    g = QGraph.from_model(messy)
    cat = g.node("cat")
    q, dq, _ = g.insert_qdq(cat.outputs[0], np.float32(0.25))
    changed = run(g.to_model())["head_out"]
    ref = run(messy)["head_out"]
    assert not np.array_equal(changed, ref)  # a coarse pair really quantizes
    g.bypass_qdq(q, dq)
    assert not g.contains(q) and not g.contains(dq)
    assert np.array_equal(run(g.to_model())["head_out"], ref)


def test_replace_uses_keeps_graph_output_name(messy):
    g = QGraph.from_model(messy)
    head = g.node("head")
    out_name = head.outputs[0].name
    relu = g.node("c1_act").outputs[0]
    g.replace_uses(head.outputs[0], relu)
    model = g.to_model()
    assert [o.name for o in model.graph.output] == [out_name]
    producer = next(n for n in model.graph.node if out_name in n.output)
    assert producer.op_type == "Identity"


def test_remove_node_uses_identity_not_value_equality():
    """graph-surgeon's Node.__eq__ compares by value: two identical nodes must stay distinct."""
    x = gs.Variable("x", dtype=np.float32, shape=[2])
    y1, y2 = (
        gs.Variable("y", dtype=np.float32, shape=[2]),
        gs.Variable("y", dtype=np.float32, shape=[2]),
    )
    n1 = gs.Node("Relu", "same", inputs=[x], outputs=[y1])
    n2 = gs.Node("Relu", "same", inputs=[x], outputs=[y2])
    assert n1 == n2  # the trap
    graph = gs.Graph(nodes=[n1, n2], inputs=[x], outputs=[y1], opset=13)
    g = QGraph(graph)
    g.remove_node(n2)
    assert g.contains(n1) and not g.contains(n2)
    assert g.nodes == [n1] and g.nodes[0] is n1
    assert x.outputs == [n1] and x.outputs[0] is n1


def test_set_qparams_gives_node_its_own_constant(messy):
    g = QGraph.from_model(messy)
    q, dq = g.node("left_in_Q"), g.node("left_in_DQ")
    shared = q.inputs[1]
    g.set_qparams(q, np.float32(0.5))
    assert float(g.qparams(q).scale) == 0.5
    assert float(g.qparams(dq).scale) == pytest.approx(0.03)
    assert dq.inputs[1] is not q.inputs[1] and q.inputs[1] is not shared


def test_cleanup_removes_dead_nodes_in_bulk(messy):
    g = QGraph.from_model(messy)
    removed = g.cleanup()
    assert removed == 1  # the dead DQ
    assert not any(n.name == "dead_DQ" for n in g.nodes)
    assert g.cleanup() == 0


def test_unique_names_do_not_collide(messy):
    g = QGraph.from_model(messy)
    names = {g.unique_name("left_in_Q") for _ in range(50)}
    existing = {n.name for n in g.nodes} | {t.name for n in g.nodes for t in n.outputs}
    assert len(names) == 50 and not names & existing


def _chain_model(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"r{i}") for i in range(n)]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_long_chain_no_recursion_and_linear_removal():
    """20k-node chain: topo sort, nx view, removal of every other node stay fast (no O(N^2))."""
    g = QGraph.from_model(_chain_model(20_000))
    t0 = time.perf_counter()
    order = g.topo_nodes()
    assert order[0].name == "r0" and order[-1].name == "r19999"
    assert len(g.descendants(order[-2])) == 1
    for node in order[1::2]:  # bypass odd nodes
        g.replace_uses(node.outputs[0], node.inputs[0])
        g.remove_node(node)
    # the last node produced the graph output: an Identity keeps that name
    assert len(g.nodes) == 10_001
    model = g.to_model()
    assert model.graph.node[-1].op_type == "Identity" and model.graph.output[0].name == "t20000"
    onnx.checker.check_model(model)
    assert time.perf_counter() - t0 < 10.0


def test_qparams_cache_follows_edits(messy):
    g = QGraph.from_model(messy)
    q = g.node("left_in_Q")
    first = g.qparams(q)
    assert g.qparams(q) is first  # cached
    g.set_qparams(q, np.float32(0.25))
    assert float(g.qparams(q).scale) == 0.25  # new constant: recomputed
    q.inputs[1].values = np.asarray(0.125, dtype=np.float32)  # values replaced in place
    assert float(g.qparams(q).scale) == 0.125
    q.attrs["axis"] = 0
    assert g.qparams(q) is not first


def test_negative_axis_of_a_per_channel_dq_on_a_1d_initializer() -> None:
    """A 1-D weight DQ with ``axis=-1``: the axis resolves against the rank (1), not the values."""
    w = onnx.numpy_helper.from_array(np.array([1, 2, 3], np.int8), "w")
    s = onnx.numpy_helper.from_array(np.array([0.1, 0.2, 0.3], np.float32), "s")
    z = onnx.numpy_helper.from_array(np.zeros(3, np.int8), "z")
    dq = helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"], axis=-1, name="dq")
    add = helper.make_node("Add", ["x", "wd"], ["y"], name="add")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    model = helper.make_model(
        helper.make_graph([dq, add], "g", [x], [y], [w, s, z]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    g = QGraph.from_model(model)
    qp = g.qparams(_by_name(g, "dq"))
    assert isinstance(qp.axis, int) and qp.axis == 0
