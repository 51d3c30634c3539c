"""Cleanup rules: each rewrite is bit-exact under ONNX Runtime, and only fires when it is."""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from qdq_builders import Builder, messy_model  # noqa: I001

from qdq_optimizer import fixpoint, lint, optimize
from qdq_optimizer.runtime import run, session
from tests.rules_util import outputs


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _assert_exact(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> None:
    ra, rb = run(a, seed=seed), run(b, seed=seed)
    assert ra.keys() == rb.keys()
    for k in ra:
        assert np.array_equal(ra[k], rb[k]), k


def _chain(
    scales: list[float], axis_scales: np.ndarray | None = None, axis_b: int = 1
) -> onnx.ModelProto:
    """x -> [Q(s_i) -> DQ(s_i)]* -> [per-axis pairs on axis 1, then axis_b] -> Conv -> y."""
    b = Builder()
    x = b.input("x", [1, 4, 4, 4])
    for i, s in enumerate(scales):
        x = b.qdq(x, s, name=f"p{i}")
    if axis_scales is not None:
        x = b.dq(b.q(x, axis_scales, axis=1, name="pa_Q"), axis_scales, axis=1, name="pa_DQ")
        x = b.dq(
            b.q(x, axis_scales, axis=axis_b, name="pb_Q"), axis_scales, axis=axis_b, name="pb_DQ"
        )
    y = b.conv(x, 4, 4, act=None, in_scale=None, name="conv")
    b.output(y)
    return b.build()


# ---------------------------------------------------------------- collapse-dq-q
def test_collapse_equal_scales_is_exact():
    m = _chain([0.05, 0.05, 0.05])
    out, report = optimize(m, "cleanup")
    assert report.result("collapse-dq-q").count == 2
    assert _ops(out).count("QuantizeLinear") == 1 and _ops(out).count("DequantizeLinear") == 2
    _assert_exact(m, out)


def test_collapse_keeps_different_scales():
    m = _chain([0.05, 0.07, 0.05])
    out, report = optimize(m, "cleanup")
    assert report.total_changes == 0
    assert _ops(out).count("QuantizeLinear") == 3


def test_collapse_per_axis_same_axis_only():
    s = np.array([0.01, 0.02, 0.03, 0.04], dtype=np.float32)
    m = _chain([], axis_scales=s)
    out, report = optimize(m, "cleanup")
    assert report.result("collapse-dq-q").count == 1
    _assert_exact(m, out)
    # axis -3 of a rank-4 tensor is axis 1: the same quantizer
    _, r2 = optimize(_chain([], axis_scales=s, axis_b=-3), "cleanup")
    assert r2.result("collapse-dq-q").count == 1
    # the same scale values on another axis are a different quantizer
    _, r3 = optimize(_chain([], axis_scales=s, axis_b=2), "cleanup")
    assert r3.result("collapse-dq-q").count == 0


def test_collapse_skips_graph_output_and_odd_scales():
    b = Builder()
    x = b.input("x", [1, 4])
    y = b.dq(b.q(x, 0.1, name="q0"), 0.1, name="dq0")
    z = b.q(y, 0.1, name="q_out")
    b.output(z)
    m = b.build()
    _, report = optimize(m, "cleanup")
    assert report.total_changes == 0  # q_out's output is a graph output: its name must stay
    tiny = _chain([1e-39, 1e-39])
    _, report = optimize(tiny, "cleanup")
    assert report.result("collapse-dq-q").count == 0  # denormal scale: not provably exact


def test_dq_q_identity_holds_in_onnx_runtime_for_all_int8_values():
    """The fact collapse-dq-q rests on, checked for ORT itself: Q(DQ(x, s), s) == x for every
    int8 x over 1,000 scales spread (log-uniform) over the range the rule accepts."""
    rng = np.random.default_rng(0)
    k = 1000
    scales = np.exp2(rng.uniform(-116, 111, size=k)).astype(np.float32)
    scales[:4] = [2.0**-116, 2.0**111, 1.0, 1 / 127]
    zp = np.zeros(k, dtype=np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"], axis=0),
        helper.make_node("QuantizeLinear", ["f", "s", "z"], ["y"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "dqq",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [k, 256])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [k, 256])],
        [numpy_helper.from_array(scales, "s"), numpy_helper.from_array(zp, "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.tile(np.arange(-128, 128, dtype=np.int8), (k, 1))
    (y,) = session(model).run(None, {"x": x})
    assert np.array_equal(x, y)


# ---------------------------------------------------------------- merge duplicates
def _fanout(params: list[tuple[float, int | None]], output_twin: bool = False) -> onnx.ModelProto:
    """One tensor read by several Q/DQ pairs (scale, axis-attr) each feeding its own Relu."""
    b = Builder()
    x = b.input("x", [1, 4, 3, 3])
    outs = []
    for i, (s, axis) in enumerate(params):
        sc = s if axis is None else np.full(4, s, dtype=np.float32)
        dq = b.dq(b.q(x, sc, axis=axis, name=f"q{i}"), sc, axis=axis, name=f"dq{i}")
        outs.append(
            dq if (output_twin and i == len(params) - 1) else b.node("Relu", [dq], name=f"r{i}")
        )
    for o in outs:
        b.output(o)
    return b.build()


def test_merge_duplicate_pairs_is_exact():
    m = _fanout([(0.1, None), (0.1, None), (0.2, None), (0.1, None)])
    out, report = optimize(m, "cleanup")
    assert report.result("merge-duplicate-q").count == 2
    assert report.result("merge-duplicate-dq").count == 2
    assert _ops(out).count("QuantizeLinear") == 2 and _ops(out).count("DequantizeLinear") == 2
    survivors = {n.name for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert survivors == {"q0", "q2"}  # the first in topological order survives
    _assert_exact(m, out)


def test_merge_respects_per_axis_and_graph_outputs():
    m = _fanout([(0.1, None), (0.1, 1)])  # per-tensor vs per-axis of equal values: different
    _, report = optimize(m, "cleanup")
    assert report.total_changes == 0
    m = _fanout([(0.1, None), (0.1, None)], output_twin=True)
    out, report = optimize(m, "cleanup")
    assert report.result("merge-duplicate-dq").count == 0  # dq1 is a graph output
    assert [o.name for o in out.graph.output] == [o.name for o in m.graph.output]
    _assert_exact(m, out)


# ---------------------------------------------------------------- drop dead
def test_drop_dead_pair_and_keep_shared_q():
    b = Builder()
    x = b.input("x", [1, 4])
    q = b.q(x, 0.1, name="q_shared")
    y = b.dq(q, 0.1, name="dq_used")
    b.dq(q, 0.2, name="dq_dead")  # Q still used by dq_used: stays
    b.dq(b.q(x, 0.3, name="q_lone"), 0.3, name="dq_lone")  # whole pair dead
    b.output(b.node("Relu", [y], name="r"))
    m = b.build()
    out, report = optimize(m, "cleanup")
    res = report.result("drop-dead-qdq")
    assert res.count == 2
    assert set(res.node_names()) == {"dq_dead", "dq_lone", "q_lone"}
    assert {n.name for n in out.graph.node} == {"q_shared", "dq_used", "r"}
    _assert_exact(m, out)


def test_messy_fixture_all_rules_exact_and_lint_clean():
    m = messy_model()
    out, report = optimize(m, "cleanup")
    assert {r.rule_id: r.count for r in report.results if r.count} == {
        "collapse-dq-q": 1,
        "merge-duplicate-q": 1,
        "merge-duplicate-dq": 1,
        "drop-dead-qdq": 1,
    }
    _assert_exact(m, out)
    assert lint(out, "cleanup") == []


# ---------------------------------------------------------------- property test
SCALES = st.sampled_from([0.02, 0.05, 0.1])


@st.composite
def qdq_graphs(draw):
    """Random Q/DQ networks: chains of pairs with random scales, random fan-out of duplicate
    pairs, and dangling DQs, over a small conv net."""
    b = Builder(seed=draw(st.integers(0, 3)))
    x = b.input("x", [1, 4, 5, 5])
    cur = x
    for i in range(draw(st.integers(1, 4))):
        for j in range(draw(st.integers(1, 3))):
            cur = b.qdq(cur, draw(SCALES), name=f"c{i}_{j}")
        if draw(st.booleans()):
            b.dq(
                b.node("QuantizeLinear", [cur, *_sz(b, draw(SCALES))], name=f"dead{i}_Q"),
                0.1,
                name=f"dead{i}_DQ",
            )
        branches = []
        for k in range(draw(st.integers(1, 3))):
            y = b.qdq(cur, draw(SCALES), name=f"f{i}_{k}")
            branches.append(b.conv(y, 4, 4, in_scale=None, name=f"conv{i}_{k}"))
        cur = branches[0]
        for other in branches[1:]:
            cur = b.node("Add", [cur, other], name=b._name("add"))
    b.output(cur)
    return b.build()


def _sz(b: Builder, s: float) -> list[str]:
    return [b.const(np.float32(s), "s"), b.const(np.int8(0), "z")]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qdq_graphs())
def test_property_cleanup_is_exact_idempotent_and_lint_clean(model):
    out, report = optimize(model, "cleanup")
    assert report.converged
    _assert_exact(model, out)
    again, report2 = optimize(out, "cleanup")
    assert report2.total_changes == 0
    assert again.SerializeToString() == out.SerializeToString()
    assert lint(out, "cleanup") == []
    # the neighbourhood-only revisits reach the same result as full passes
    with mock.patch.object(fixpoint, "_neighbourhood", lambda nodes: None):
        full, _ = optimize(model, "cleanup")
    assert full.SerializeToString() == out.SerializeToString()
    n_qdq = lambda m: sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node)  # noqa: E731
    assert n_qdq(out) <= n_qdq(model)


@pytest.mark.parametrize("scale", [0.05])
def test_uint8_asymmetric_chain_collapses_exactly(scale):
    """uint8 with a zero point collapses exactly too."""
    b = Builder()
    x = b.input("x", [1, 4, 3, 3])
    s, z = b.const(np.float32(scale)), b.const(np.uint8(128))
    q1 = b.node("QuantizeLinear", [x, s, z], name="q1")
    d1 = b.node("DequantizeLinear", [q1, s, z], name="d1")
    q2 = b.node("QuantizeLinear", [d1, s, z], name="q2")
    d2 = b.node("DequantizeLinear", [q2, s, z], name="d2")
    b.output(b.node("Relu", [d2], name="r"))
    m = b.build()
    out, report = optimize(m, "cleanup")
    assert report.result("collapse-dq-q").count == 1
    _assert_exact(m, out)


def test_dq_q_identity_per_tensor_kernels():
    """The same identity through ORT's per-tensor Q/DQ kernels: 64 scalar scales."""
    rng = np.random.default_rng(1)
    scales = np.exp2(rng.uniform(-116, 111, size=64)).astype(np.float32)
    nodes, inits, outs = [], [], []
    for i, s in enumerate(scales):
        inits += [numpy_helper.from_array(s, f"s{i}"), numpy_helper.from_array(np.int8(0), f"z{i}")]
        nodes += [
            helper.make_node("DequantizeLinear", ["x", f"s{i}", f"z{i}"], [f"f{i}"]),
            helper.make_node("QuantizeLinear", [f"f{i}", f"s{i}", f"z{i}"], [f"y{i}"]),
        ]
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.INT8, [256]))
    graph = helper.make_graph(
        nodes, "dqq", [helper.make_tensor_value_info("x", TensorProto.INT8, [256])], outs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.arange(-128, 128, dtype=np.int8)
    for y in session(model).run(None, {"x": x}):
        assert np.array_equal(x, y)


def test_dead_non_qdq_nodes_are_counted():
    b = Builder()
    x = b.input("x", [1, 4])
    b.node("Relu", [x], name="dangling")
    b.output(b.node("Sigmoid", [x], name="s"))
    out, report = optimize(b.build(), "cleanup")
    assert report.stats["dead_nodes_removed"] == 1
    assert [n.name for n in out.graph.node] == ["s"]


def test_merge_opportunity_created_by_a_collapse_is_found():
    """x -> Qa -> DQa -> {Relu r1, Qb -> DQb -> Relu r2} with equal scales: collapsing DQa->Qb
    makes DQb a twin of DQa, which the next (neighbourhood-only) iteration must merge."""
    b = Builder()
    x = b.input("x", [1, 4])
    qa = b.q(x, 0.1, name="Qa")
    dqa = b.dq(qa, 0.1, name="DQa")
    b.output(b.node("Relu", [dqa], name="r1"))
    dqb = b.dq(b.q(dqa, 0.1, name="Qb"), 0.1, name="DQb")
    b.output(b.node("Relu", [dqb], name="r2"))
    m = b.build()
    out, report = optimize(m, "cleanup")
    assert report.result("collapse-dq-q").count == 1
    assert report.result("merge-duplicate-dq").count == 1
    assert sorted(n.name for n in out.graph.node) == ["DQa", "Qa", "r1", "r2"]
    _assert_exact(m, out)
    assert optimize(out, "cleanup")[1].total_changes == 0


# ------------------------------------------------- canonical form (exporter artefacts, issue 10)
def _assert_bit_exact(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    for seed in (0, 1):
        for x, y in zip(outputs(a, seed=seed), outputs(b, seed=seed), strict=True):
            assert np.array_equal(x, y)
    _assert_exact(a, b)  # and under ORT's default optimizations


def _conv_weight(b: Builder, cout: int, cin: int, name: str) -> str:
    w = b.rng.integers(-127, 128, size=(cout, cin, 1, 1), dtype=np.int8)
    ws = (b.rng.random(cout).astype(np.float32) + 0.5) * 0.01
    return b.dq(b.const(w, f"{name}_w"), ws, axis=0, name=f"{name}_wDQ")


def _bias_dq(b: Builder, c: int, name: str) -> str:
    bias = b.rng.integers(-2000, 2000, size=c).astype(np.int32)
    s = b.const(np.full(c, 1e-4, np.float32), f"{name}_bs")
    z = b.const(np.zeros(c, np.int32), f"{name}_bz")
    return b.node(
        "DequantizeLinear", [b.const(bias, f"{name}_b"), s, z], name=f"{name}_bDQ", axis=0
    )


def _identity_model() -> onnx.ModelProto:
    """torch.onnx / ORT artefacts: Identity over a shared int32 bias DQ (two convs), over BN
    statistics (initializers), and a Constant node feeding an Add."""
    b = Builder()
    x = b.qdq(b.input("x", [1, 4, 5, 5]), 0.05, name="in")
    bias = _bias_dq(b, 4, "shared")
    bias_id = b.node("Identity", [bias], name="bias_id")
    y1 = b.node("Conv", [x, _conv_weight(b, 4, 4, "c1"), bias], name="c1")
    y2 = b.node("Conv", [x, _conv_weight(b, 4, 4, "c2"), bias_id], name="c2")
    stats = [
        b.const(v.astype(np.float32), n)
        for n, v in (
            ("gamma", b.rng.random(4) + 0.5),
            ("beta", b.rng.standard_normal(4)),
            ("mean", b.rng.standard_normal(4)),
            ("var", b.rng.random(4) + 0.5),
        )
    ]
    ids = [b.node("Identity", [s], name=f"id_{s}") for s in stats]
    y1 = b.node("BatchNormalization", [y1, *ids], name="bn1")
    c = b.node(
        "Constant",
        [],
        name="k",
        value=numpy_helper.from_array(np.float32([0.5]).reshape(1, 1, 1, 1)),
    )
    b.output(b.node("Add", [c, b.node("Add", [y1, y2], name="sum")], name="add_k"))
    return b.build()


def test_identity_and_constant_nodes_are_removed_exactly():
    m = _identity_model()
    out, report = optimize(m, "cleanup")
    assert "Identity" not in _ops(out) and "Constant" not in _ops(out)
    assert report.result("remove-identity").count == 5
    assert report.result("constant-to-initializer").count == 1
    _assert_bit_exact(m, out)


def test_identity_over_shared_bias_no_longer_hides_it_from_the_tensorrt_rules():
    m = _identity_model()
    out, report = optimize(m, "tensorrt")
    assert report.result("float-bias").count == 2  # both convs, the shared DQ behind Identity too
    assert report.result("fold-bn").count == 1  # BN statistics behind Identity are seen
    assert "BatchNormalization" not in _ops(out)
    # what is left is the unquantized residual skip of this toy graph, not a hidden constant
    assert {p.rule_id for p in lint(out, "tensorrt")} <= {"residual-add"}


def _transposed_weight_model(pair: bool, perm: list[int] | None) -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(Transpose(DQ(W[N, K], axis 0))): a Linear exported with W^T."""
    b = Builder()
    x = b.qdq(b.input("x", [2, 8]), 0.05, name="in")
    w = b.rng.standard_normal((6, 8)).astype(np.float32)
    s = (np.abs(w).max(1) / 127).astype(np.float32)
    if pair:
        wd = b.dq(b.q(b.const(w, "w"), s, axis=0, name="wQ"), s, axis=0, name="wDQ")
    else:
        wq = np.clip(np.rint(w / s[:, None]), -127, 127).astype(np.int8)
        wd = b.dq(b.const(wq, "w"), s, axis=0, name="wDQ")
    attrs = {} if perm is None else {"perm": perm}
    t = b.node("Transpose", [wd], name="wT", **attrs)
    b.output(b.node("MatMul", [x, t], name="mm"))
    return b.build()


@pytest.mark.parametrize("pair", [False, True], ids=["int8", "pair"])
@pytest.mark.parametrize("perm", [[1, 0], None], ids=["perm", "default-perm"])
def test_transpose_of_weight_folds_with_axis_remapped(pair, perm):
    m = _transposed_weight_model(pair, perm)
    out, report = optimize(m, "cleanup")
    assert "Transpose" not in _ops(out)
    dq = next(n for n in out.graph.node if n.name == "wDQ")
    assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1
    assert report.result("fold-constant-layout").count == 1
    _assert_bit_exact(m, out)


def test_constant_reshape_folds_exactly():
    """Paddle reshapes its constants at run time (a bias [C] -> [1, C, 1, 1] before Add)."""
    b = Builder()
    x = b.qdq(b.input("x", [1, 4, 3, 3]), 0.05, name="in")
    y = b.conv(x, 4, 4, act=None, in_scale=None, name="conv")
    bias = b.const(b.rng.standard_normal(4).astype(np.float32), "pbias")
    shape = b.const(np.array([1, -1, 1, 1], np.int64), "pshape")
    r = b.node("Reshape", [bias, shape], name="reshape_bias")
    u = b.node("Unsqueeze", [b.const(np.float32([2.0]), "k"), b.const(np.int64([0]), "ax")])
    b.output(b.node("Mul", [b.node("Add", [y, r], name="add_bias"), u], name="mul"))
    m = b.build()
    out, report = optimize(m, "cleanup")
    assert "Reshape" not in _ops(out) and "Unsqueeze" not in _ops(out)
    assert report.result("fold-constant-layout").count == 2
    _assert_bit_exact(m, out)


def test_reshape_of_a_per_channel_weight_is_left_alone():
    """A reshape could split the channel axis: no fold, nothing claimed."""
    b = Builder()
    x = b.qdq(b.input("x", [2, 8]), 0.05, name="in")
    wq = b.rng.integers(-127, 128, size=(8, 6), dtype=np.int8)
    wd = b.dq(b.const(wq, "w"), np.full(6, 0.01, np.float32), axis=1, name="wDQ")
    r = b.node("Reshape", [wd, b.const(np.array([8, 6], np.int64), "s")], name="wR")
    b.output(b.node("MatMul", [x, r], name="mm"))
    m = b.build()
    out, report = optimize(m, "cleanup")
    assert report.result("fold-constant-layout").count == 0
    assert "Reshape" in _ops(out)


@pytest.mark.parametrize("form", ["int8", "uint8", "pair"])
def test_dequantized_bn_parameters_fold_exactly_then_bn_folds(form):
    """ORT quantizes BatchNormalization's parameters: DQ(int const) -> BN. Folded to float."""
    b = Builder()
    x = b.qdq(b.input("x", [1, 4, 3, 3]), 0.05, name="in")
    y = b.conv(x, 4, 4, act=None, in_scale=None, name="conv")
    params = []
    for i, v in enumerate(
        [b.rng.random(4) + 0.5, b.rng.standard_normal(4), b.rng.standard_normal(4)]
        + [b.rng.random(4) + 0.5]
    ):
        v = v.astype(np.float32)
        s = np.float32(np.abs(v).max() / 100)
        if form == "pair":
            params.append(b.dq(b.q(b.const(v, f"p{i}"), s), s))
            continue
        dt = np.int8 if form == "int8" else np.uint8
        zp = dt(0 if form == "int8" else 128)
        q = np.clip(np.rint(v / s) + int(zp), np.iinfo(dt).min, np.iinfo(dt).max).astype(dt)
        sc, zc = b.const(s, f"s{i}"), b.const(zp, f"z{i}")
        params.append(b.node("DequantizeLinear", [b.const(q, f"p{i}"), sc, zc], name=f"pDQ{i}"))
    b.output(b.node("BatchNormalization", [y, *params], name="bn"))
    m = b.build()
    out, report = optimize(m, "cleanup")
    assert report.result("fold-dq-constant").count == 4
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    inits = {t.name for t in out.graph.initializer}
    assert all(i in inits for i in bn.input[1:])
    _assert_bit_exact(m, out)
    folded, rep = optimize(m, "tensorrt")
    assert rep.result("fold-bn").count == 1 and "BatchNormalization" not in _ops(folded)


@pytest.mark.parametrize("opset", [10, 11, 12])
def test_old_opsets_are_upgraded_to_13(opset):
    b = Builder(opset=opset)
    x = b.input("x", [1, 4, 3, 3])
    s, z = b.const(np.float32(0.05)), b.const(np.int8(0))
    q = b.node("QuantizeLinear", [x, s, z], name="q")
    d = b.node("DequantizeLinear", [q, s, z], name="d")
    b.output(b.node("Relu", [d], name="r"))
    m = b.build()
    out, report = optimize(m, "cleanup")
    assert any("upgraded from opset" in w for w in report.warnings)
    assert max(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 13
    _assert_bit_exact(m, out)


def test_reshape_of_a_per_tensor_weight_dq_folds_exactly():
    b = Builder()
    x = b.qdq(b.input("x", [2, 8]), 0.05, name="in")
    wq = b.rng.integers(-127, 128, size=(6, 8), dtype=np.int8)
    wd = b.dq(b.const(wq, "w"), np.float32(0.01), name="wDQ")
    r = b.node("Reshape", [wd, b.const(np.array([8, 6], np.int64), "s")], name="wR")
    b.output(b.node("MatMul", [x, r], name="mm"))
    m = b.build()
    out, report = optimize(m, "cleanup")
    assert report.result("fold-constant-layout").count == 1
    assert "Reshape" not in _ops(out)
    _assert_bit_exact(m, out)
