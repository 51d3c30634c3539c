"""Rule 1: one scale per group, by policy, with a report of how far each scale moved."""

from __future__ import annotations

import json

import pytest

from qdq_optimizer.api import optimize
from qdq_optimizer.guard import without
from qdq_optimizer.ruleset import load_ruleset
from tests.rules_util import G, scales_of


def concat_model():
    g = G()
    a, b = g.op("Relu", ["x"], "ra"), g.op("Relu", ["x"], "rb")
    ca = g.conv(g.q(a, 0.1, "qa"), name="ca")
    cb = g.conv(g.q(b, 0.3, "qb"), name="cb")
    cat = g.op("Concat", [a, b], "cat", axis=1)
    mp = g.op("MaxPool", [cat], "mp", kernel_shape=[1, 1])
    cc = g.conv(g.q(mp, 0.2, "qout"), cin=4, name="cc")
    return g.model([ca, cb, cc])


def rules(policy: str, ranges=None):
    """tensorrt with scale-groups' policy set; without shift-relu-range, which would halve the
    scales of the Relu groups these tests read."""
    rs = without(load_ruleset("tensorrt"), ["shift-relu-range"])
    for i, r in enumerate(rs.rules):
        if r.id == "scale-groups":
            params = {"policy": policy, **({"ranges": ranges} if ranges is not None else {})}
            rs.rules[i] = type(r)(r.id, r.why, r.match, r.action, params, r.source)
    return rs


@pytest.mark.parametrize(
    "policy, ranges, expect",
    [
        ("max", None, 0.3),
        ("output", None, 0.2),
        ("calibrated", {"mp_out": 12.7, "ra_out": 2.0}, 0.1),
    ],
)
def test_policies(policy, ranges, expect) -> None:
    out, rep = optimize(concat_model(), rules(policy, ranges))
    s = scales_of(out)
    assert [s[k] for k in ("qa_Q", "qb_Q", "qout_Q")] == [pytest.approx(expect)] * 3
    for dq, q in (("qa_DQ", "qa_Q"), ("qout_DQ", "qout_Q")):
        assert scales_of(out, "DequantizeLinear")[dq] == s[q]
    change = rep.result("scale-groups").changes[0]
    assert "Concat" in change.detail and "MaxPool" in change.detail and policy in change.detail


def test_report_says_how_far_each_scale_moved() -> None:
    _, rep = optimize(concat_model(), "tensorrt")
    (change,) = rep.result("scale-groups").changes
    assert set(change.nodes) == {"qa_Q", "qout_Q"}
    assert "qa_Q 0.1 (+200.0%)" in change.detail and "qout_Q 0.2 (+50.0%)" in change.detail


def test_calibrated_ranges_from_file(tmp_path) -> None:
    p = tmp_path / "ranges.json"
    p.write_text(json.dumps({"rb_out": 25.4}))
    out, _ = optimize(concat_model(), rules("calibrated", str(p)))
    assert scales_of(out)["qa_Q"] == pytest.approx(0.2)


def test_unknown_policy_is_a_rule_set_error() -> None:
    from qdq_optimizer.errors import RuleSetError

    with pytest.raises(RuleSetError):
        optimize(concat_model(), rules("median"))


def test_second_run_changes_nothing() -> None:
    out, _ = optimize(concat_model(), "tensorrt")
    _, rep = optimize(out, "tensorrt")
    assert rep.total_changes == 0


def test_rule_set_settings_choose_the_policy(tmp_path) -> None:
    """`settings: {scale_policy, ranges}` in a YAML rule set applies when the rule sets no params."""
    (tmp_path / "ranges.json").write_text(json.dumps({"rb_out": 25.4}))
    for policy, extra, expect in (
        ("output", "", 0.2),
        ("calibrated", f"  ranges: {tmp_path / 'ranges.json'}\n", 0.2),
        ("max", "", 0.3),
    ):
        p = tmp_path / f"{policy}.yaml"
        p.write_text(
            f"name: s\nextends: tensorrt\ndisable: [shift-relu-range]\n"
            f"settings:\n  scale_policy: {policy}\n{extra}"
        )
        out, _ = optimize(concat_model(), str(p))
        assert scales_of(out)["qa_Q"] == pytest.approx(expect), policy
