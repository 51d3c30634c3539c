"""Lint reports each problem once: the rules' finds under their ids, plus the TensorRT checks no
rule of the set owns (trt_checks.FIXED_BY); optimize lints its own result and says what is left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import cli
from qdq_optimizer.actions import registered_actions
from qdq_optimizer.api import lint, optimize
from qdq_optimizer.ruleset import load_ruleset
from qdq_optimizer.testing.graphgen import FloatBuilder, naive_qdq, ort_qdq
from qdq_optimizer.trt_checks import CHECK_IDS, FIXED_BY, unowned_checks
from tests.rules_util import G

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def concat_model():
    g = G()
    a, b = g.op("Relu", ["x"]), g.op("Relu", ["x"])
    c1 = g.conv(g.q(a, 0.1, "qa"))
    cat = g.op("Concat", [a, b], axis=1)
    return g.model([c1, g.conv(g.q(cat, 0.2, "qcat"), cin=4)])


def test_fixed_by_names_real_actions_of_the_tensorrt_set() -> None:
    actions = registered_actions()
    tensorrt = {r.action for r in load_ruleset("tensorrt").rules}
    assert set(FIXED_BY) <= set(CHECK_IDS)
    assert all(a in actions and a in tensorrt for a in FIXED_BY.values())
    assert unowned_checks(tensorrt) == set(CHECK_IDS) - set(FIXED_BY)
    assert unowned_checks([]) == set(CHECK_IDS)


def test_a_scale_group_problem_is_reported_once_under_the_rule_id() -> None:
    m = concat_model()
    ids = [p.rule_id for p in lint(m, "tensorrt")]
    assert ids.count("scale-groups") == 1 and "trt-scale-group" not in ids
    # without the rule, the check says it (same problem, the check's id)
    ids = [p.rule_id for p in lint(m, "cleanup", checks=True)]
    assert ids.count("trt-scale-group") == 1 and "scale-groups" not in ids


def test_a_pair_between_conv_and_activation_is_one_problem() -> None:
    g = G()
    y = g.conv(g.q("x", 0.05), name="conv")
    y = g.conv(g.q(g.op("Relu", [g.q(y, 0.1, "between")]), 0.1), name="next")
    m = g.model([y])
    about = [p for p in lint(m, "tensorrt") if "between_Q" in p.node_names]
    assert [p.rule_id for p in about] == ["epilogue-qdq"]
    about = [p for p in lint(m, "cleanup", checks=True) if "between_Q" in p.node_names]
    assert [p.rule_id for p in about] == ["trt-epilogue-qdq"]


@pytest.mark.parametrize("make", [naive_qdq, ort_qdq])
def test_rule_lint_and_check_lint_find_the_same_placement_problems(make) -> None:
    """The checks a rule owns use the rule's selector: with the rules or with the checks alone
    (cleanup --checks on), lint names the same Q/DQ pairs."""
    m = make(
        FloatBuilder(seed=6).build(["conv", "residual", "elan"], ["silu", "relu", "leaky"]), seed=6
    )
    by_rule = {
        "epilogue-qdq": "trt-epilogue-qdq",
        "residual-add": "trt-residual-add",
        "weighted-output-qdq": "trt-weighted-output",
        "float-islands": "trt-float-island",
    }
    rules = lint(m, "tensorrt")
    checks = lint(m, "cleanup", checks=True)
    found = 0
    for rule_id, check_id in by_rule.items():
        a = sorted(tuple(p.node_names) for p in rules if p.rule_id == rule_id)
        b = sorted(tuple(p.node_names) for p in checks if p.rule_id == check_id)
        assert a == b, rule_id
        found += len(a)
    assert found > 0
    assert not {p.rule_id for p in rules} & set(FIXED_BY)
    pairs = [frozenset(p.node_names) for p in rules if len(p.node_names) >= 2]
    assert len(pairs) == len(set(pairs))  # no pair reported twice


def unhandled_pair_model() -> onnx.ModelProto:
    """A conv behind an int4 activation pair: a Q/DQ type no rule converts (TensorRT has INT4
    weights only)."""
    g = G()
    y = g.conv(g.q("x", 0.05, "i4"), name="conv")
    m = g.model([y], opset=21)
    zp = next(n for n in m.graph.node if n.name == "i4_Q").input[2]
    init = next(t for t in m.graph.initializer if t.name == zp)
    init.CopyFrom(helper.make_tensor(zp, TensorProto.INT4, [], [0]))
    m.ir_version = 10
    return m


def test_optimize_reports_what_is_left() -> None:
    """An int4 activation pair is passed through (no rule handles it): the result still has a
    problem, and the report says so under the check's id."""
    m = unhandled_pair_model()
    out, rep = optimize(m, "tensorrt")
    ids = {p.rule_id for p in rep.remaining_problems}
    assert "trt-qdq-type" in ids
    assert rep.to_dict()["remaining_problems"] and all(
        p.rule_id in ids for p in lint(out, "tensorrt")
    )
    _, dry = optimize(m, "tensorrt", dry_run=True)
    assert dry.remaining_problems is None


def test_int32_bias_warning_only_names_nodes_still_there() -> None:
    m = ort_qdq(FloatBuilder(seed=4).build(["conv"], ["relu"], head=False), seed=4)
    out, rep = optimize(m, "tensorrt")
    assert not [w for w in rep.warnings if "int32" in w]
    assert rep.result("float-bias").count >= 1
    # a rule set without float-bias leaves them: then the warning is true and stays
    _, rep = optimize(m, "cleanup")
    assert [w for w in rep.warnings if "int32" in w and "untouched" in w]
    _, rep = optimize(m, "tensorrt", dry_run=True)  # float-bias would convert them
    assert not [w for w in rep.warnings if "int32" in w]


@pytest.mark.skipif(not (MODELS / "yolov8ish-naive.onnx").exists(), reason="fixture missing")
def test_cli_strict_and_summary(tmp_path, capsys) -> None:
    src = MODELS / "yolov8ish-naive.onnx"
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert cli.main(["optimize", str(src), str(out), "--rules", "yolov8", "--strict"]) == 0
    assert "remaining: none" in capsys.readouterr().out
    # an int4 pair no rule converts: optimize succeeds, says what is left; --strict fails
    bad = tmp_path / "i4.onnx"
    bad.write_bytes(unhandled_pair_model().SerializeToString())
    assert cli.main(["optimize", str(bad), str(out), "--report", str(rep)]) == 0
    text = capsys.readouterr().out
    assert "remaining:" in text and "trt-qdq-type" in text
    out.unlink()
    assert cli.main(["optimize", str(bad), str(out), "--strict", "--report", str(rep)]) == 1
    assert out.exists()  # written: --strict is a gate, the report says what is left
    left = json.loads(rep.read_text())["remaining_problems"]
    assert left and left[0]["rule_id"] == "trt-qdq-type"


def test_a_pair_symmetric_int8_converts_is_reported_once() -> None:
    """A uint8 pair is symmetric-int8's to convert: lint names it under that rule only, not also
    under `trt-qdq-type`; an int4 pair no rule converts keeps the check's report."""
    g = G()
    y = g.conv(g.q("x", 0.05, "u8", dtype=np.uint8), name="conv")
    y = g.conv(g.q(y, 0.05, "i4"), name="conv2")
    m = g.model([y], opset=21)
    zp = next(n for n in m.graph.node if n.name == "i4_Q").input[2]
    init = next(t for t in m.graph.initializer if t.name == zp)
    init.CopyFrom(helper.make_tensor(zp, TensorProto.INT4, [], [0]))
    m.ir_version = 10
    problems = lint(m, "tensorrt")
    by_node: dict[str, list[str]] = {}
    for p in problems:
        for n in p.node_names:
            by_node.setdefault(n, []).append(p.rule_id)
    assert by_node["u8_Q"] == ["symmetric-int8"]
    assert "trt-qdq-type" in by_node["i4_Q"]
    # without the rule (checks only), the uint8 pair is the check's to report
    checked = lint(m, "cleanup", checks=True)
    assert any(p.rule_id == "trt-qdq-type" and "u8_Q" in p.node_names for p in checked)
