"""The engine: fixpoint, bound, determinism, dry-run, ignore, graph-scope actions, checks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from qdq_builders import messy_model  # noqa: I001

from qdq_optimizer import lint, optimize
from qdq_optimizer.actions import register_action
from qdq_optimizer.api import lint_report
from qdq_optimizer.report import Change
from qdq_optimizer.ruleset import load_ruleset


@pytest.fixture(scope="module")
def messy() -> onnx.ModelProto:
    return messy_model()


# ---------------------------------------------------------------- test-only actions
CALLS: list[object] = []


@register_action("_test_flip_scale", params={"a": 0.5, "b": 0.25})
def _flip(graph, node, params, ctx):
    """Never converges: flips one Q's scale between two values on every visit."""
    if node.name != "cat_out_Q":
        return []
    new = params["a"] if float(graph.qparams(node).scale) != params["a"] else params["b"]
    if not ctx.dry_run:
        graph.set_qparams(node, np.float32(new))
    return [Change("rescale", [node.name], f"scale {new}")]


@register_action("_test_global", params={})
def _global(graph, node, params, ctx):
    """Records how it is called; changes nothing."""
    CALLS.append((node, ctx.dry_run, dict(ctx.settings)))
    return []


@register_action("_test_boom", params={})
def _boom(graph, node, params, ctx):
    """Fails."""
    raise KeyError("kaput")


@register_action("_test_break_graph", params={})
def _break(graph, node, params, ctx):
    """Deletes a node whose output is still read: an invalid model."""
    if node.name != "c1_act":
        return []
    graph.remove_node(node)
    return [Change("remove", [node.name])]


def _ruleset(tmp_path, body: str, extends: str | None = None):
    path = tmp_path / "t.yaml"
    head = f"extends: {extends}\n" if extends else ""
    path.write_text(head + "settings: {level: 3}\nrules:\n" + body)
    return load_ruleset(str(path))


def _rule(rid: str, action: str, match: str = "{op: QuantizeLinear}") -> str:
    return f"  - id: {rid}\n    why: test\n    match: {match}\n    action: {action}\n"


# ---------------------------------------------------------------- tests
def test_cleanup_reaches_fixpoint_and_is_idempotent(messy):
    out, report = optimize(messy, "cleanup")
    assert report.converged and report.iterations == 2  # one changing pass, one quiet pass
    assert report.total_changes == 4
    assert report.stats["nodes_before"] == 30 and report.stats["nodes_after"] == 25
    again, report2 = optimize(out, "cleanup")
    assert report2.total_changes == 0 and report2.iterations == 1
    assert again.SerializeToString() == out.SerializeToString()


def test_deterministic_output(messy):
    a, _ = optimize(messy, "cleanup")
    b, _ = optimize(messy, "cleanup")
    assert a.SerializeToString() == b.SerializeToString()


def test_input_model_is_not_modified(messy):
    before = messy.SerializeToString()
    optimize(messy, "cleanup")
    assert messy.SerializeToString() == before


def test_bound_hit_is_reported(tmp_path, messy):
    rs = _ruleset(tmp_path, _rule("flip", "_test_flip_scale"))
    _, report = optimize(messy, rs, max_iterations=3)
    assert not report.converged and report.iterations == 3
    assert report.result("flip").count == 3
    assert any("fixpoint within 3 iterations" in w for w in report.warnings)


def test_dry_run_reports_without_changing(messy):
    model, report = optimize(messy, "cleanup", dry_run=True)
    assert model.SerializeToString() == messy.SerializeToString()
    assert report.dry_run and report.iterations == 1
    assert report.result("collapse-dq-q").count == 1
    problems = lint(messy, "cleanup")
    assert {p.rule_id for p in problems} == {"collapse-dq-q", "merge-duplicate-q", "drop-dead-qdq"}
    assert all(p.node_names and p.message for p in problems)


def test_lint_of_optimized_model_is_clean(messy):
    out, _ = optimize(messy, "cleanup")
    assert lint(out, "cleanup") == []


def test_ignore_from_call_and_from_rule_set(tmp_path, messy):
    _, report = optimize(messy, "cleanup", ignore=["^right_in"])
    assert report.result("merge-duplicate-q").count == 0
    assert report.result("collapse-dq-q").count == 1
    rs_path = tmp_path / "ign.yaml"
    rs_path.write_text("extends: cleanup\nignore: ['^dead_']\n")
    _, report = optimize(messy, str(rs_path))
    assert report.result("drop-dead-qdq").count == 0
    # lint honours ignore too
    assert all("dead_DQ" not in p.node_names for p in lint(messy, str(rs_path)))


def test_graph_scope_action_gets_no_node_and_settings(tmp_path, messy):
    CALLS.clear()
    rs = _ruleset(tmp_path, _rule("g", "_test_global", "{scope: graph}"))
    optimize(messy, rs, keep_weight_q=True)
    # nothing changed: one iteration, one call; then one dry-run call (optimize lints its result)
    assert [c[1] for c in CALLS] == [False, True]
    node, dry, settings = CALLS[0]
    assert node is None and not dry and settings["level"] == 3 and settings["keep_weight_q"]
    CALLS.clear()
    lint_report(messy, rs)
    assert CALLS and CALLS[0][1] is True


def test_action_failure_names_the_rule(tmp_path, messy):
    rs = _ruleset(tmp_path, _rule("explodes", "_test_boom"))
    with pytest.raises(RuntimeError, match=r"rule 'explodes' \(_test_boom\) failed on node"):
        optimize(messy, rs)


def test_invalid_result_is_an_internal_error(tmp_path, messy):
    rs = _ruleset(tmp_path, _rule("breaks", "_test_break_graph", "{op: Relu}"))
    with pytest.raises(RuntimeError, match="fails onnx.checker"):
        optimize(messy, rs)


def test_rules_apply_in_order_with_inheritance(tmp_path, messy):
    rs = _ruleset(tmp_path, _rule("g", "_test_global", "{scope: graph}"), extends="cleanup")
    assert [r.id for r in rs.rules][-1] == "g" and rs.chain == ["cleanup", "t"]
    _, report = optimize(messy, rs)
    assert [r.rule_id for r in report.results] == [r.id for r in rs.rules]


def test_large_model_path_checks_by_file(monkeypatch, messy):
    """Above protobuf's 2 GiB limit the checker runs on a saved copy with external data;
    exercised here by lowering the limit."""
    from qdq_optimizer import model_io

    monkeypatch.setattr(model_io, "PROTO_LIMIT", 1024)
    out, report = optimize(messy, "cleanup")
    assert report.total_changes == 4 and not report.warnings
    monkeypatch.undo()
    assert model_io.check_model(out) is None
    # the checked model still holds its weights (nothing moved to a deleted temp file)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in out.graph.initializer)
    reference, _ = optimize(messy, "cleanup")
    assert out.SerializeToString() == reference.SerializeToString()


@register_action("_test_mutates_in_dry_run", params={})
def _sloppy(graph, node, params, ctx):
    """Ignores ctx.dry_run."""
    if node.name == "c1_in_Q":
        graph.set_qparams(node, np.float32(1.0))
        return [Change("rescale", [node.name])]
    return []


def test_dry_run_edits_are_refused(tmp_path, messy):
    rs = _ruleset(tmp_path, _rule("sloppy", "_test_mutates_in_dry_run"))
    with pytest.raises(RuntimeError, match="dry run"):
        lint(messy, rs)
    with pytest.raises(RuntimeError, match="dry run"):
        optimize(messy, rs)  # optimize lints its result: a dry run too
    _, report = optimize(messy, rs, lint_result=False)  # outside dry-run the edit is fine
    assert report.result("sloppy").count >= 1 and report.remaining_problems is None
