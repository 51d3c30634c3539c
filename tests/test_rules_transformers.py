"""The ``tensorrt`` rules and lint on transformer graphs (issue 11, docs/transformers.md section 3).

Small hand-built graphs, one per export form the rules must read: pytorch-quantization's Linear
(weight DQ behind a Transpose), attention's batched matmuls, ONNX Runtime's DQ'd LayerNorm
parameters, bias Adds and transformer residuals. Then the corpus graphs
(``fixtures/corpus/transformers``): no INT8 GEMM or attention matmul lost, lint clean, SQNR vs the
float model no worse than the input's minus 0.5 dB, idempotent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from bench_util import load_benchmark, transformer_entries
from onnx import helper, numpy_helper
from qdq_builders import Builder

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.commute import is_int8_tensor
from qdq_optimizer.graph import QGraph
from qdq_optimizer.matmul_patterns import is_int8_matmul
from qdq_optimizer.runtime import run
from qdq_optimizer.trt_patterns import is_quantized_weighted, residual_inputs

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "fixtures" / "corpus" / "transformers" / "manifest.json"

W = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)  # [out, in]
WS = (np.abs(W).max(axis=1) / 127).astype(np.float32)  # per output row (axis 0)


def _pq_linear(b: Builder, x: str, name: str, axis: int = 0, bias: bool = True) -> str:
    """pytorch-quantization's nn.Linear on a 3-D input: MatMul(DQ(Q(x)), Transpose(DQ(Q(W))))
    (+ bias Add)."""
    ws = WS if axis == 0 else (np.abs(W).max(axis=0) / 127).astype(np.float32)
    wd = b.dq(b.q(b.const(W, f"{name}_W"), ws, axis=axis), ws, axis=axis, name=f"{name}_wDQ")
    wt = b.node("Transpose", [wd], name=f"{name}_wT", perm=[1, 0])
    y = b.node("MatMul", [b.qdq(x, 0.05, name=f"{name}_in"), wt], name=name)
    if bias:
        y = b.node(
            "Add", [y, b.const(np.full(8, 0.1, np.float32), f"{name}_b")], name=f"{name}_bias"
        )
    return y


def _producer_op(graph: QGraph, node_name: str, index: int) -> str | None:
    p = graph.producer(graph.node(node_name).inputs[index])
    return None if p is None else p.op


def _ids(problems) -> list[str]:
    return sorted(p.rule_id for p in problems)


# ---------------------------------------------------------------- weighted GEMMs, every form
def test_pq_linear_keeps_its_input_pair_and_is_lint_clean():
    b = Builder()
    x = b.input("x", [1, 4, 8])
    b.output(b.node("Relu", [_pq_linear(b, x, "fc")], name="act"))
    model = b.build()
    out, _ = optimize(model, "tensorrt")
    g = QGraph.from_model(out)
    assert is_quantized_weighted(g, g.node("fc")), "the Transpose hides the weight no more"
    assert _producer_op(g, "fc", 0) == "DequantizeLinear"
    assert lint(out, "tensorrt") == []
    again, report = optimize(out, "tensorrt")
    assert report.total_changes == 0


def test_gemm_weight_behind_a_reshape_that_no_rule_folds_keeps_its_input_pair():
    """A per-channel weight DQ behind a Reshape (cleanup does not fold it: a reshape could split
    the channel axis) is still a weight: the GEMM's input pair stays, lint is clean (a Reshape on
    the path hides the weight axis: not reported)."""
    b = Builder()
    x = b.input("x", [1, 4, 8])
    w8 = np.clip(np.rint(W.T / WS), -127, 127).astype(np.int8)  # [in, out], scales per column
    wd = b.dq(b.const(w8, "W8"), WS, axis=1, name="fc_wDQ")
    wr = b.node("Reshape", [wd, b.const(np.array([1, 8, 8], np.int64), "shape")], name="fc_wR")
    b.output(b.node("MatMul", [b.qdq(x, 0.05, name="fc_in"), wr], name="fc"))
    out, _ = optimize(b.build(), "tensorrt")
    g = QGraph.from_model(out)
    assert _producer_op(g, "fc", 1) == "Reshape", "the Reshape is still there"
    assert _producer_op(g, "fc", 0) == "DequantizeLinear"
    assert is_quantized_weighted(g, g.node("fc"))
    assert lint(out, "tensorrt") == []


def test_weight_axis_lint_follows_the_transpose():
    b = Builder()
    x = b.input("x", [1, 4, 8])
    b.output(_pq_linear(b, x, "fc", axis=1))  # scales per input channel: wrong
    problems = lint(b.build(), "tensorrt")
    axis = [p for p in problems if p.rule_id == "trt-qdq-axis"]
    assert len(axis) == 1 and axis[0].node_names == ["fc_wDQ", "fc"]
    assert "output-channel axis 0" in axis[0].message

    b = Builder()
    x = b.input("x", [1, 4, 8])
    b.output(_pq_linear(b, x, "fc", axis=0))
    assert "trt-qdq-axis" not in _ids(lint(b.build(), "tensorrt"))


def test_ignored_pq_linear_gets_float_weights_behind_the_transpose():
    b = Builder()
    x = b.input("x", [1, 4, 8])
    b.output(_pq_linear(b, x, "fc", bias=False))
    out, _ = optimize(b.build(), "tensorrt", ignore=["fc"])
    g = QGraph.from_model(out)
    assert not any(g.is_q(n) or g.is_dq(n) for n in g.nodes)
    xs = np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32)
    got = run(out, {"x": xs})  # pair form: the original float weight comes back
    np.testing.assert_allclose(next(iter(got.values())), xs @ W.T, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- attention matmuls
def _attention(b: Builder, quantize_k: bool = True) -> None:
    q, k, v = (b.input(n, [1, 2, 4, 8]) for n in "qkv")
    kt = b.node(
        "Transpose", [b.qdq(k, 0.05, name="k") if quantize_k else k], name="kT", perm=[0, 1, 3, 2]
    )
    s = b.node("MatMul", [b.qdq(q, 0.05, name="q"), kt], name="bmm1")
    s = b.node("Mul", [s, b.const(np.float32(0.35), "scale")], name="scale_mul")
    p = b.node("Softmax", [s], name="softmax", axis=-1)
    o = b.node("MatMul", [b.qdq(p, 1 / 127, name="p"), b.qdq(v, 0.05, name="v")], name="bmm2")
    b.output(o)


def test_int8_attention_matmuls_keep_both_input_pairs():
    b = Builder()
    _attention(b)
    model = b.build()
    out, _ = optimize(model, "tensorrt")
    g = QGraph.from_model(out)
    assert is_int8_matmul(g, g.node("bmm1")) and is_int8_matmul(g, g.node("bmm2"))
    assert sum(g.is_q(n) for n in g.nodes) == 4
    assert lint(out, "tensorrt") == []


def test_bmm_with_one_int8_input_is_linted_and_its_lone_pair_removed():
    b = Builder()
    _attention(b, quantize_k=False)
    model = b.build()
    checks = lint(model, "cleanup", checks=True)  # the check itself, no rule owns it here
    bmm = [p for p in checks if p.rule_id == "trt-bmm-input"]
    assert [p.node_names for p in bmm] == [["bmm1"]]
    assert "first input" in bmm[0].message
    # under tensorrt the problem is reported once, by the rule that removes the pair
    found = {p.rule_id: p.node_names for p in lint(model, "tensorrt")}
    assert found == {"float-islands": ["q_Q", "q_DQ"]}
    out, _ = optimize(model, "tensorrt")
    g = QGraph.from_model(out)
    assert _producer_op(g, "bmm1", 0) != "DequantizeLinear"  # the lone pair was a float island
    assert is_int8_matmul(g, g.node("bmm2"))
    assert lint(out, "tensorrt") == []


def test_bmm_lone_pair_shared_with_a_gemm_is_bypassed_for_the_bmm_only():
    """k's DQ feeds an INT8 GEMM and BMM1, whose other input (q) is float: the pair stays for
    the GEMM, BMM1 reads the float tensor; lint finds it (as the bmm-input rule under tensorrt) and is clean after."""
    b = Builder()
    q, k = b.input("q", [1, 4, 8]), b.input("k", [1, 4, 8])
    kd = b.qdq(k, 0.05, name="k")
    wd = b.dq(b.const(np.ones((8, 8), np.int8), "W8"), WS, axis=1)
    b.output(b.node("MatMul", [kd, wd], name="gemm"))
    kt = b.node("Transpose", [kd], name="kT", perm=[0, 2, 1])
    b.output(b.node("MatMul", [q, kt], name="bmm1"))
    model = b.build()
    assert "trt-bmm-input" in _ids(lint(model, "cleanup", checks=True))
    assert _ids(lint(model, "tensorrt")) == ["bmm-input"]
    out, report = optimize(model, "tensorrt")
    g = QGraph.from_model(out)
    assert {r.rule_id: r.count for r in report.results if r.count} == {"bmm-input": 1}
    assert _producer_op(g, "gemm", 0) == "DequantizeLinear"
    assert not is_int8_tensor(g, g.node("bmm1").inputs[1])
    assert lint(out, "tensorrt") == []


# ---------------------------------------------------------------- ORT's LayerNorm parameters
def _ort_layernorm(scale_int8: bool = True) -> onnx.ModelProto:
    """LayerNormalization with ORT's int8 scale DQ and int32 bias DQ (and an int32 DQ read by a
    Mul), float input: only float-params applies."""
    b = Builder(opset=17)
    x = b.input("x", [1, 4, 8])
    gamma = np.random.default_rng(2).random(8).astype(np.float32) + 0.5
    gs_ = np.float32(gamma.max() / 127)
    g8 = np.clip(np.rint(gamma / gs_), -128, 127).astype(np.int8)
    scale = b.node("DequantizeLinear", [b.const(g8, "g8"), b.const(gs_, "gs")], name="ln_scale_DQ")
    if not scale_int8:
        scale = b.const(gamma, "gamma")
    b32 = np.arange(-4, 4, dtype=np.int32) * 123457
    bias = b.node(
        "DequantizeLinear",
        [b.const(b32, "b32"), b.const(np.float32(3.1e-7), "bs")],
        name="ln_bias_DQ",
    )
    y = b.node("LayerNormalization", [x, scale, bias], name="ln", axis=-1)
    m32 = b.node(
        "DequantizeLinear",
        [b.const(np.int32(987654321), "m32"), b.const(np.float32(1e-9), "ms")],
        name="mul_DQ",
    )
    b.output(b.node("Mul", [y, m32], name="mul"))
    return b.build()


def test_layernorm_params_become_float_bit_exact():
    model = _ort_layernorm()
    out, report = optimize(model, "tensorrt")
    g = QGraph.from_model(out)
    assert not any(g.is_dq(n) for n in g.nodes)
    assert {r.rule_id: r.count for r in report.results if r.count} == {"float-params": 3}
    xs = np.random.default_rng(0).standard_normal((3, 4, 8)).astype(np.float32) * 3
    a, c = run(model, {"x": xs}), run(out, {"x": xs})
    for name in a:
        assert np.array_equal(a[name], c[name]), name
    assert lint(out, "tensorrt") == []


def test_int8_dq_of_a_non_norm_constant_is_left_alone():
    b = Builder()
    x = b.input("x", [1, 8])
    c8 = b.node(
        "DequantizeLinear", [b.const(np.full(8, 3, np.int8), "c8"), b.const(np.float32(0.1), "cs")]
    )
    b.output(b.node("Mul", [x, c8], name="mul"))
    out, report = optimize(b.build(), "tensorrt")
    assert not any(r.rule_id == "float-params" and r.count for r in report.results)


# ---------------------------------------------------------------- residuals and bias Adds
def _block(skip_pair: bool, branch_pair: bool, bias_form: str = "const") -> onnx.ModelProto:
    """Post-norm transformer residual: Add(stream, proj(x) + b) -> LayerNorm. The stream DQ is
    shared by the residual Add and the projection's input (ModelOpt's shared DQ)."""
    b = Builder(opset=17)
    x = b.input("x", [1, 4, 8])
    stream = b.qdq(x, 0.05, name="stream") if skip_pair else x
    wd = b.dq(
        b.const(np.clip(np.rint(W / WS[:, None]), -127, 127).astype(np.int8).T, "W8"), WS, axis=1
    )
    xin = stream if skip_pair else b.qdq(x, 0.05, name="proj_in")
    y = b.node("MatMul", [xin, wd], name="proj")
    bias = np.full(8, 0.1, np.float32)
    if bias_form == "const":
        bt = b.const(bias, "b")
    elif bias_form == "identity":  # ModelOpt's deduplicated bias
        bt = b.node("Identity", [b.const(bias, "b")], name="b_id")
    else:  # ORT's int8 DQ of the bias
        bt = b.node(
            "DequantizeLinear",
            [b.const(np.full(8, 10, np.int8), "b8"), b.const(np.float32(0.01), "bs")],
        )
    y = b.node("Add", [y, bt], name="proj_bias")
    if branch_pair:
        y = b.qdq(y, 0.05, name="branch")
    r = b.node("Add", [stream, y], name="residual")
    ones, zeros = b.const(np.ones(8, np.float32), "g"), b.const(np.zeros(8, np.float32), "z")
    b.output(b.node("LayerNormalization", [r, ones, zeros], name="ln", axis=-1))
    return b.build()


@pytest.mark.parametrize("bias_form", ["const", "identity", "int8-dq"])
def test_a_bias_add_is_never_a_residual(bias_form):
    g = QGraph.from_model(_block(True, True, bias_form))
    assert residual_inputs(g, g.node("proj_bias")) is None
    assert residual_inputs(g, g.node("residual")) == (1, 0)  # branch: the GEMM behind its bias


def test_transformer_residual_keeps_the_shared_skip_and_drops_the_branch_pair():
    out, report = optimize(_block(skip_pair=True, branch_pair=True), "tensorrt")
    g = QGraph.from_model(out)
    assert _producer_op(g, "residual", 0) == "DequantizeLinear", "the stream pair is kept"
    assert _producer_op(g, "residual", 1) == "Add", "the branch pair is removed"
    assert _producer_op(g, "proj", 0) == "DequantizeLinear"
    assert lint(out, "tensorrt") == []


def test_transformer_residual_gets_no_skip_quantizer_inserted():
    model = _block(skip_pair=False, branch_pair=False)
    out, report = optimize(model, "tensorrt")
    g = QGraph.from_model(out)
    assert _producer_op(g, "residual", 0) is None  # the graph input, unquantized
    assert sum(g.is_q(n) for n in g.nodes) == 1  # only the projection's input
    assert lint(out, "tensorrt") == []


# ---------------------------------------------------------------- the transformer corpus
ENTRIES = transformer_entries()
CORPUS = [e["name"] for e in ENTRIES]


def _bench():
    return load_benchmark("bench_transformers")


def _ratio(text: str) -> tuple[int, int, int]:
    before, rest = text.split("->")
    after, total = rest.split("/")
    return int(before), int(after), int(total)


@pytest.mark.skipif(not ENTRIES, reason="no transformer corpus (make corpus-transformers)")
@pytest.mark.parametrize("name", CORPUS)
def test_corpus_keeps_every_int8_gemm_and_bmm(name):
    entry = next(e for e in ENTRIES if e["name"] == name)
    row = _bench().measure(entry)
    assert row.exit == 0, row.error
    for what in (row.gemm, row.bmm):
        before, after, _ = _ratio(what)
        assert after >= before, f"{name}: INT8 lost ({what})"
    assert row.lint_rules_after == {}, row.lint_rules_after
    assert row.sqnr_out >= row.sqnr_in - 0.5
    assert row.idempotent


@pytest.mark.skipif(not ENTRIES, reason="no transformer corpus (make corpus-transformers)")
def test_pq_vit_and_bert_keep_all_gemms_and_bmms():
    for name, gemm, bmm in (("vit-pq", "9->9/9", "4->4/4"), ("bert-pq", "12->12/12", "4->4/4")):
        row = _bench().measure(next(e for e in ENTRIES if e["name"] == name))
        assert (row.gemm, row.bmm) == (gemm, bmm), name


def test_float_params_tensor_values_match_ort_dq():
    """The float initializer equals ONNX Runtime's DequantizeLinear output bit for bit (int32
    values too large for float32's mantissa included)."""
    vals = np.array([2**24 + 1, -(2**25) - 3, 7], np.int32)
    dq = helper.make_node("DequantizeLinear", ["v", "s"], ["y"])
    graph = helper.make_graph(
        [dq], "dq", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(vals, "v"), numpy_helper.from_array(np.float32(3.3e-5), "s")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    from qdq_optimizer.qdq_numpy import dequantize_np

    ort = run(model, {})["y"]
    assert np.array_equal(ort, dequantize_np(vals, np.float32(3.3e-5), None, None))
