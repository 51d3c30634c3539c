"""TensorRT rules as anchored matches: the matcher's op-list constraints, the engine's
``skip_ignored``/``reverse``/``ctx.cache`` support, and behaviour the anchors must not change."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_optimizer import optimize
from qdq_optimizer.actions import ActionContext, get_action, register_action
from qdq_optimizer.dump import dump_model
from qdq_optimizer.graph import QGraph
from qdq_optimizer.matcher import matches
from qdq_optimizer.ruleset import load_ruleset
from qdq_optimizer.testing.graphgen import FloatBuilder, naive_qdq

TRT_ANCHORS = {
    "keep-ignored-float": {"Conv", "ConvTranspose", "Gemm", "MatMul"},
    "float-bias": {"Conv", "ConvTranspose", "Gemm"},
    "float-params": {"DequantizeLinear"},
    "epilogue-qdq": {"Conv", "ConvTranspose", "Gemm", "MatMul"},
    "fold-bn": {"BatchNormalization"},
    "weight-int8": {"QuantizeLinear"},
    "residual-add": {"Add"},
    "weighted-output-qdq": {"Conv", "ConvTranspose", "Gemm", "MatMul"},
    "float-islands": {"QuantizeLinear"},
    "bmm-input": {"MatMul"},
}


def test_tensorrt_rules_are_anchored_except_scale_groups():
    rules = {r.id: r for r in load_ruleset("tensorrt").rules}
    for rid, ops in TRT_ANCHORS.items():
        assert rules[rid].match.scope == "node", rid
        assert set(rules[rid].match.ops) == ops, rid
    assert rules["scale-groups"].match.scope == "graph"


@pytest.mark.parametrize(
    "name",
    sorted({r.action for r in load_ruleset("tensorrt").rules if r.match.scope == "node"}),
)
def test_anchored_actions_ignore_a_missing_or_foreign_anchor(name):
    """Each action is a function of one anchor: None (or a node it does not handle) is a no-op."""
    g = QGraph.from_model(_chain_model())
    ctx = ActionContext(ignore=[])
    assert get_action(name).fn(g, None, {}, ctx) == []
    relu = next(g.nodes_of("Relu"))
    assert get_action(name).fn(g, relu, {}, ctx) == []


def _producer_model() -> onnx.ModelProto:
    """x -> Conv -> BN, x -> ConvTranspose -> BN, x -> Relu -> BN."""
    c = 2
    inits = [
        numpy_helper.from_array(np.ones((c, c, 1, 1), np.float32), "w"),
        *(numpy_helper.from_array(np.ones(c, np.float32), n) for n in ("g", "b", "m", "v")),
    ]
    bn_in = ["g", "b", "m", "v"]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="convt"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("BatchNormalization", ["c", *bn_in], ["y1"], name="bn_conv"),
        helper.make_node("BatchNormalization", ["t", *bn_in], ["y2"], name="bn_convt"),
        helper.make_node("BatchNormalization", ["r", *bn_in], ["y3"], name="bn_relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "p",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None) for y in ("y1", "y2", "y3")],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_op_list_on_a_producer_constraint():
    """fold-bn's ``inputs: [{op: [Conv, ConvTranspose]}]`` accepts either producer, not others."""
    match = next(r for r in load_ruleset("tensorrt").rules if r.id == "fold-bn").match
    g = QGraph.from_model(_producer_model())
    got = {n.name: matches(g, n, match) for n in g.nodes_of("BatchNormalization")}
    assert got == {"bn_conv": True, "bn_convt": True, "bn_relu": False}


# ---------------------------------------------------------------- engine support
SEEN: list[tuple[str, str, int]] = []


def _record(tag):
    def fn(graph, node, params, ctx):
        ctx.cache.setdefault("calls", 0)
        ctx.cache["calls"] += 1
        SEEN.append((tag, node.name, id(ctx.cache)))
        return []

    return fn


register_action("_test_anchor_default", params={})(_record("default"))
register_action("_test_anchor_sees_ignored", params={}, skip_ignored=False)(_record("all"))
register_action("_test_anchor_reverse", params={}, reverse=True)(_record("rev"))


def _chain_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="r1"),
        helper.make_node("Relu", ["a"], ["b"], name="r2"),
        helper.make_node("Relu", ["b"], ["y"], name="r3"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_engine_skip_ignored_reverse_and_cache(tmp_path):
    path = tmp_path / "t.yaml"
    body = "".join(
        f"  - id: {rid}\n    why: w\n    match: {{op: Relu}}\n    action: {action}\n"
        for rid, action in (
            ("d", "_test_anchor_default"),
            ("a", "_test_anchor_sees_ignored"),
            ("r", "_test_anchor_reverse"),
        )
    )
    path.write_text("name: t\nrules:\n" + body)
    SEEN.clear()
    optimize(_chain_model(), load_ruleset(str(path)), ignore=["r2"], lint_result=False)
    by_tag: dict[str, list[str]] = {}
    caches: dict[str, set[int]] = {}
    for tag, name, cache in SEEN:
        by_tag.setdefault(tag, []).append(name)
        caches.setdefault(tag, set()).add(cache)
    assert by_tag == {"default": ["r1", "r3"], "all": ["r1", "r2", "r3"], "rev": ["r3", "r1"]}
    # one cache per rule (and iteration), shared by that rule's anchors
    assert all(len(c) == 1 for c in caches.values())
    assert len(set().union(*caches.values())) == 3


# ---------------------------------------------------------------- ignore semantics kept
@pytest.fixture(scope="module")
def bn_model() -> onnx.ModelProto:
    fm = FloatBuilder(seed=3).build(["conv", "residual"], ["silu", "relu"], bn=True)
    return naive_qdq(fm, seed=3)


def test_fold_bn_follows_the_conv_not_the_bn_name(bn_model):
    """The ignore list applies to the conv: an ignored BN name does not stop the fold."""
    plain, _ = optimize(bn_model, "tensorrt")
    ignored_bn, rep = optimize(bn_model, "tensorrt", ignore=["BatchNormalization"])
    assert not [n for n in ignored_bn.graph.node if n.op_type == "BatchNormalization"]
    assert rep.result("fold-bn").count == sum(
        n.op_type == "BatchNormalization" for n in bn_model.graph.node
    )
    assert dump_model(plain) == dump_model(ignored_bn)


def _first_conv(model: onnx.ModelProto) -> str:
    name = next(n.name for n in model.graph.node if n.op_type == "Conv")
    return "^" + re.escape(name) + "$"


def test_weight_int8_follows_the_weight_users_not_the_q_name(bn_model):
    """An ignored weight-Q name does not stop the int8 fold; an ignored conv does."""
    _, rep = optimize(bn_model, "tensorrt", ignore=["_weight_quantizer"])
    convs = sum(n.op_type == "Conv" for n in bn_model.graph.node)
    assert rep.result("weight-int8").count == convs
    _, rep = optimize(bn_model, "tensorrt", ignore=[_first_conv(bn_model)])
    assert rep.result("weight-int8").count == convs - 1
    assert rep.result("keep-ignored-float").count == 1


def test_float_bias_applies_to_ignored_ops():
    """ORT's int32 bias DQ becomes float on an ignored conv too (keep-ignored-float keeps it
    float; the bias must be float as well)."""
    from qdq_optimizer.testing.graphgen import ort_qdq

    model = ort_qdq(FloatBuilder(seed=5).build(["conv"], ["relu"]), seed=5)
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    _, rep = optimize(model, "tensorrt", ignore=[_first_conv(model)])
    assert rep.result("float-bias").count == convs
    assert rep.result("keep-ignored-float").count == 1


def _float_chain_model() -> onnx.ModelProto:
    """x -> Relu -> Q/DQ -> Reshape -> Q/DQ -> Sigmoid -> y: the first pair reaches a Q (INT8)
    until the second pair is gone."""
    inits = [
        numpy_helper.from_array(np.float32(0.1), "s"),
        numpy_helper.from_array(np.int8(0), "z"),
        numpy_helper.from_array(np.array([1, 4], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q1"], name="q1"),
        helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"], name="dq1"),
        helper.make_node("Reshape", ["d1", "shape"], ["rs"], name="reshape"),
        helper.make_node("QuantizeLinear", ["rs", "s", "z"], ["q2"], name="q2"),
        helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["d2"], name="dq2"),
        helper.make_node("Sigmoid", ["d2"], ["y"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_islands_removes_a_chain_in_one_pass():
    """Reverse topological order: the later pair goes first, then the earlier one in the same
    iteration (forward order would need a second removing iteration)."""
    _, rep = optimize(_float_chain_model(), "tensorrt")
    removed = [c.nodes for c in rep.result("float-islands").changes]
    assert removed == [["q2", "dq2"], ["q1", "dq1"]]
    assert rep.iterations == 2  # one that removes both, one that confirms the fixpoint
