"""Lint's ``trt-attention`` warnings and the opt-in ``attention`` rule set (docs/transformers.md
3.2, 3.3, 3.6): small attention cores built by hand, then the transformer corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from bench_util import transformer_entries
from float_types import convert_float_type
from qdq_builders import Builder

from qdq_optimizer.api import lint, lint_report, optimize
from qdq_optimizer.cli import main as cli_main
from qdq_optimizer.commute import is_int8_tensor
from qdq_optimizer.errors import RuleSetError
from qdq_optimizer.graph import QGraph
from qdq_optimizer.matmul_patterns import attention_blocks, is_int8_matmul
from qdq_optimizer.ruleset import load_ruleset
from qdq_optimizer.runtime import run

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "fixtures" / "corpus" / "transformers" / "manifest.json"


def _core(
    *,
    head: int = 16,
    seq: int = 8,
    scale_op: str | None = "Div",
    scale: float = 4.0,
    probs_qdq: bool = True,
    v_qdq: bool = True,
    probs_second: bool = False,
    clip: bool = False,
    share_q: bool = False,
) -> onnx.ModelProto:
    """One attention core with INT8 BMM1: ``Softmax(q @ k^T [Clip] (/|*) scale) @ v``, or with the
    probabilities second and transposed (YOLO11's C2PSA: ``v^T @ P^T``)."""
    b = Builder()
    q, k, v = (b.input(n, [1, 2, seq, head]) for n in "qkv")
    qd = b.qdq(q, 0.05, name="q")
    kt = b.node("Transpose", [b.qdq(k, 0.05, name="k")], name="kT", perm=[0, 1, 3, 2])
    s = b.node("MatMul", [qd, kt], name="bmm1")
    if clip:
        s = b.node(
            "Clip",
            [s, b.const(np.float32(-6.0), "lo"), b.const(np.float32(6.0), "hi")],
            name="sat",
        )
    if scale_op is not None:
        s = b.node(scale_op, [s, b.const(np.float32(scale), "scale")], name="scale_op")
    p = b.node("Softmax", [s], name="softmax", axis=-1)
    vd = b.qdq(v, 0.05, name="v") if v_qdq else v
    if probs_second:
        pt = b.node("Transpose", [p], name="pT", perm=[0, 1, 3, 2])
        vt = b.node("Transpose", [vd], name="vT", perm=[0, 1, 3, 2])
        o = b.node("MatMul", [vt, b.qdq(pt, 1 / 127, name="p") if probs_qdq else pt], name="bmm2")
    else:
        o = b.node("MatMul", [b.qdq(p, 1 / 127, name="p") if probs_qdq else p, vd], name="bmm2")
    b.output(o)
    if share_q:  # q's DQ also read elsewhere: its pair cannot be re-scaled for BMM1 alone
        b.output(b.node("Relu", [qd], name="other_reader"))
    return b.build()


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        dtype = np.float16 if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else None
        out[i.name] = rng.standard_normal(shape).astype(dtype or np.float32)
    return out


def _warnings(model, rules: str = "tensorrt") -> list:
    return lint_report(model, rules).lint_warnings


def _counts(report) -> dict[str, int]:
    return {r.rule_id: r.count for r in report.results if r.count}


# ---------------------------------------------------------------- lint warnings
def test_scale_after_bmm1_is_a_warning_quoting_the_fact_not_a_problem():
    model = _core()
    assert lint(model, "tensorrt") == []  # exit status and problems unchanged
    (w,) = _warnings(model)
    assert w.rule_id == "trt-attention" and w.severity == "warning"
    assert w.node_names == ["bmm1", "scale_op"]
    assert "multiplied with attention scale" in w.message and "first Batched" in w.message


def test_float_probabilities_with_int8_v_are_a_warning():
    model = _core(scale_op=None, probs_qdq=False)
    (w,) = _warnings(model)
    assert w.node_names == ["bmm1", "softmax", "bmm2"]
    assert "V input is INT8" in w.message and "after softmax" in w.message
    only_bmm1 = _warnings(_core(scale_op=None, probs_qdq=False, v_qdq=False))
    assert ["BMM2 (Softmax output x V) runs in float" in w.message for w in only_bmm1] == [True]


def test_head_size_and_sequence_length_warnings_need_int8_and_known_shapes():
    (w,) = _warnings(_core(head=8, scale_op=None))
    assert "Q/K head size 8" in w.message and "V head size 8" in w.message
    assert "16, 32 or 64" in w.message
    (w,) = _warnings(_core(head=8, scale_op=None, probs_second=True))  # C2PSA's v^T @ P^T
    assert "V head size 8" in w.message
    (w,) = _warnings(_core(seq=520, scale_op=None))
    assert "query sequence length 520 > 512" in w.message
    assert _warnings(_core(head=64, seq=512, scale_op=None)) == []
    # a float attention core has nothing to warn about
    b = Builder()
    q, k = b.input("q", [1, 2, 8, 8]), b.input("k", [1, 2, 8, 8])
    s = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 1, 3, 2])], name="bmm1")
    b.output(b.node("MatMul", [b.node("Softmax", [s], axis=-1), k], name="bmm2"))
    assert _warnings(b.build()) == []


def test_lint_cli_prints_warnings_and_exits_0(tmp_path, capsys):
    path = tmp_path / "core.onnx"
    onnx.save(_core(), path)
    assert cli_main(["lint", str(path), "--rules", "tensorrt"]) == 0
    out = capsys.readouterr().out
    assert "warning [trt-attention] bmm1, scale_op:" in out
    assert "0 problem(s), 1 warning(s) in" in out
    assert cli_main(["lint", str(path), "--rules", "tensorrt", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["problems"] == [] and doc["lint_warnings"][0]["severity"] == "warning"


def test_optimize_keeps_warnings_out_of_remaining_problems():
    _, report = optimize(_core(), "tensorrt")
    assert report.remaining_problems == []
    assert [w.rule_id for w in report.lint_warnings] == ["trt-attention"]
    assert report.to_dict()["lint_warnings"][0]["node_names"] == ["bmm1", "scale_op"]


def test_under_the_attention_rules_the_rule_reports_what_it_fixes():
    model = _core()
    problems = lint(model, "attention")
    assert [p.rule_id for p in problems] == ["attention-scale-before-bmm1"]
    assert _warnings(model, "attention") == []
    # a case the rule cannot fix (q's pair has another reader) stays a warning
    shared = _core(share_q=True)
    k_moved = lint(shared, "attention")  # the rule moves it onto K instead
    assert [p.rule_id for p in k_moved] == ["attention-scale-before-bmm1"]
    assert "k_Q" in k_moved[0].node_names


# ---------------------------------------------------------------- attention-scale-before-bmm1
@pytest.mark.parametrize("op,scale", [("Div", 4.0), ("Mul", 0.125), ("Div", 8.0)])
def test_power_of_two_scale_moves_bit_exact(op, scale):
    model = _core(scale_op=op, scale=scale)
    feeds = _feeds(model)
    ref, _ = optimize(model, "tensorrt")
    out, report = optimize(model, "attention")
    assert _counts(report) == {"attention-scale-before-bmm1": 1}
    g = QGraph.from_model(out)
    assert not any(n.op in ("Mul", "Div") for n in g.node("bmm1").outputs[0].outputs)
    moved = g.producer(g.node("q_Q").inputs[0])
    assert moved.op == op and g.qparams(g.node("q_Q")).scale == pytest.approx(
        0.05 * (scale if op == "Mul" else 1 / scale)
    )
    assert is_int8_matmul(g, g.node("bmm1"))
    a, b = run(ref, feeds), run(out, feeds)
    for name in a:
        assert np.array_equal(a[name], b[name])
    assert report.remaining_problems == [] and report.lint_warnings == []
    again, rep2 = optimize(out, "attention")
    assert rep2.total_changes == 0


def test_a_scale_constant_of_higher_rank_is_not_moved():
    """Mul by a [1,1,1,1,1] constant raises the scores' rank: moving it would change shapes."""
    b = Builder()
    q, k = b.input("q", [1, 2, 8, 16]), b.input("k", [1, 2, 8, 16])
    kt = b.node("Transpose", [b.qdq(k, 0.05, name="k")], name="kT", perm=[0, 1, 3, 2])
    s = b.node("MatMul", [b.qdq(q, 0.05, name="q"), kt], name="bmm1")
    s = b.node("Mul", [s, b.const(np.full((1, 1, 1, 1, 1), 0.25, np.float32))], name="scale_op")
    b.output(b.node("Softmax", [s], name="softmax", axis=-1))
    model = b.build()
    _, report = optimize(model, "attention")
    assert "attention-scale-before-bmm1" not in _counts(report)
    assert [w.node_names for w in report.lint_warnings] == [["bmm1", "scale_op"]]


def test_other_scale_moves_within_rounding_and_keeps_the_int8_values():
    model = _core(scale_op="Mul", scale=1 / np.sqrt(32))
    feeds = _feeds(model)
    ref, _ = optimize(model, "tensorrt")
    out, report = optimize(model, "attention")
    assert _counts(report) == {"attention-scale-before-bmm1": 1}
    a, b = run(ref, feeds), run(out, feeds)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6)


def test_saturation_clips_between_bmm1_and_the_scale_are_rescaled_exactly():
    model = _core(scale_op="Div", scale=4.0, clip=True)
    feeds = _feeds(model)
    feeds["q"] *= 8  # scores beyond the Clip's range
    ref, _ = optimize(model, "tensorrt")
    out, report = optimize(model, "attention")
    assert _counts(report) == {"attention-scale-before-bmm1": 1}
    g = QGraph.from_model(out)
    (clip,) = [n for n in g.nodes if n.op == "Clip"]
    assert clip.inputs[0] is g.node("bmm1").outputs[0]
    lo, hi = (float(np.asarray(t.values)) for t in clip.inputs[1:])
    assert (lo, hi) == (-1.5, 1.5)
    a, b = run(ref, feeds), run(out, feeds)
    for name in a:
        assert np.array_equal(a[name], b[name])


def test_fp16_graph_stays_fp16():
    model = convert_float_type(_core(scale_op="Div", scale=4.0, probs_qdq=False))
    out, report = optimize(model, "attention")
    assert _counts(report) == {"softmax-output-qdq": 1, "attention-scale-before-bmm1": 1}
    g = QGraph.from_model(out)
    for n in g.nodes:
        if g.is_q(n) or g.is_dq(n):
            assert np.asarray(n.inputs[1].values).dtype == np.float16, n.name
    assert run(out, _feeds(out))  # ONNX Runtime runs it


# ---------------------------------------------------------------- softmax-output-qdq
@pytest.mark.parametrize("probs_second", [False, True])
def test_softmax_output_gets_a_1_over_127_pair(probs_second):
    model = _core(scale_op=None, probs_qdq=False, probs_second=probs_second)
    out, report = optimize(model, "attention")
    assert _counts(report) == {"softmax-output-qdq": 1}
    g = QGraph.from_model(out)
    (q,) = g.quantizers_of(g.node("softmax").outputs[0])
    assert float(g.qparams(q).scale) == pytest.approx(1 / 127)
    assert is_int8_matmul(g, g.node("bmm2")) and is_int8_matmul(g, g.node("bmm1"))
    assert report.remaining_problems == [] and report.lint_warnings == []
    _, rep2 = optimize(out, "attention")
    assert rep2.total_changes == 0
    # tensorrt alone drops V's lone pair instead (BMM2 runs in float)
    ref, _ = optimize(model, "tensorrt")
    gr = QGraph.from_model(ref)
    assert not is_int8_tensor(gr, gr.node("bmm2").inputs[1 if not probs_second else 0])
    # the output moves by the probabilities' rounding (at most 1/254 each)
    feeds = _feeds(model)
    a, b = run(model, feeds), run(out, feeds)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=0.05)


def test_softmax_output_left_alone_when_v_is_float():
    model = _core(scale_op=None, probs_qdq=False, v_qdq=False)
    _, report = optimize(model, "attention")
    assert "softmax-output-qdq" not in _counts(report)
    assert [w.rule_id for w in report.lint_warnings] == ["trt-attention"]


# ---------------------------------------------------------------- the rule set itself
def test_attention_rule_set_extends_tensorrt_and_orders_its_rules():
    rs = load_ruleset("attention")
    ids = [r.id for r in rs.rules]
    assert rs.chain == ["cleanup", "tensorrt", "attention"]
    assert ids.index("softmax-output-qdq") == ids.index("float-islands") - 1
    assert ids[-1] == "attention-scale-before-bmm1"


def test_warnings_name_the_registered_actions_that_fix_them():
    from qdq_optimizer.actions import registered_actions
    from qdq_optimizer.matmul_checks import SCALE_MOVE_ACTION, SOFTMAX_QDQ_ACTION

    actions = {r.action for r in load_ruleset("attention").rules}
    assert {SCALE_MOVE_ACTION, SOFTMAX_QDQ_ACTION} <= actions <= set(registered_actions())


def test_a_scalar_after_a_matmul_that_feeds_no_softmax_stays():
    b = Builder()
    x, y = b.input("x", [1, 4, 8]), b.input("y", [1, 8, 4])
    m = b.node("MatMul", [b.qdq(x, 0.05, name="x"), b.qdq(y, 0.05, name="y")], name="mm")
    b.output(b.node("Mul", [m, b.const(np.float32(0.5), "half")], name="half_mul"))
    _, report = optimize(b.build(), "attention")
    assert "attention-scale-before-bmm1" not in _counts(report)


@pytest.mark.parametrize("order", ["yolo11, attention", "attention, yolo11"])
def test_before_holds_when_sets_are_combined(tmp_path, order: str):
    """A user's set for YOLO11 with attention: `extends: [yolo11, attention]` (either order) keeps
    softmax-output-qdq in front of float-islands and yolo11's ignore list."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"extends: [{order}]\n")
    rs = load_ruleset(mine)
    ids = [r.id for r in rs.rules]
    assert ids.index("softmax-output-qdq") < ids.index("float-islands")
    assert len(ids) == len(set(ids))
    assert any("dfl" in p.pattern for p in rs.ignore)


def test_before_names_an_existing_rule(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "extends: tensorrt\nrules:\n  - id: x\n    why: w\n    match: {op: Softmax}\n"
        "    action: insert_softmax_output_qdq\n    before: no-such-rule\n"
    )
    with pytest.raises(RuleSetError, match="'before' names unknown rule 'no-such-rule'"):
        load_ruleset(bad)


# ---------------------------------------------------------------- the transformer corpus
def _entry(name: str) -> dict:
    entries = transformer_entries()
    if not entries:
        pytest.skip("no transformer corpus")
    return next(e for e in entries if e["name"] == name)


def _corpus(name: str):
    from qdq_optimizer.runtime import load_inputs

    e = _entry(name)
    return onnx.load(ROOT / e["quantized"]), load_inputs(ROOT / e["inputs"])


@pytest.mark.parametrize(
    "name,moves", [("bert-pq", 2), ("detr-ort", 3), ("c2psa-pq", 1), ("bert-modelopt-fp16", 2)]
)
def test_corpus_scale_moves_keep_every_bmm_and_the_sqnr(name, moves):
    model, feeds = _corpus(name)
    assert any(w.rule_id == "trt-attention" for w in _warnings(model))
    ref, _ = optimize(model, "tensorrt")
    out, report = optimize(model, "attention")
    assert _counts(report).get("attention-scale-before-bmm1") == moves
    assert _counts(report).get("softmax-output-qdq") is None  # every producer quantized P
    g = QGraph.from_model(out)
    blocks = attention_blocks(g)
    assert blocks and all(is_int8_matmul(g, b.bmm1.node) for b in blocks)
    assert all(is_int8_matmul(g, b.bmm2.node) for b in blocks)
    assert report.lint_warnings == []
    _, rep2 = optimize(out, "attention")
    assert rep2.total_changes == 0
    a, b = run(ref, feeds), run(out, feeds)
    ya = np.concatenate([v.ravel() for v in a.values()]).astype(np.float64)
    yb = np.concatenate([v.ravel() for v in b.values()]).astype(np.float64)
    noise = np.sum((ya - yb) ** 2)
    assert noise == 0 or 10 * np.log10(np.sum(ya**2) / noise) > 40  # fp16: 45 dB measured


def test_corpus_softmax_pair_removed_is_put_back():
    """vit-modelopt-fp32 with its Softmax-output pairs bypassed: tensorrt then drops V's pairs
    (BMM2 in float); the attention rules quantize the probabilities again and keep V's."""
    model, _ = _corpus("vit-modelopt-fp32")
    g = QGraph.from_model(model)
    for b in attention_blocks(g):
        q = g.quantizers_of(b.softmax.outputs[0])[0]
        g.bypass_qdq(q, q.outputs[0].outputs[0])
    stripped = g.to_model()
    trt, _ = optimize(stripped, "tensorrt")
    out, report = optimize(stripped, "attention")
    assert _counts(report)["softmax-output-qdq"] == 2
    gt, go = QGraph.from_model(trt), QGraph.from_model(out)
    assert not any(is_int8_matmul(gt, b.bmm2.node) for b in attention_blocks(gt))
    assert all(is_int8_matmul(go, b.bmm2.node) for b in attention_blocks(go))
    assert report.remaining_problems == [] and report.lint_warnings == []
