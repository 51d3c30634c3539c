"""The accuracy guard: leave-one-out rule effects, backing out a costly rule, refusing honestly."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import cli
from qdq_optimizer import guard
from qdq_optimizer.api import optimize
from qdq_optimizer.calibration import bypass_activation_qdq
from qdq_optimizer.errors import InputError, UsageError
from qdq_optimizer.guard import GuardFailed, pooled_sqnr, without
from qdq_optimizer.ruleset import load_ruleset
from tests.rules_util import G, scales_of


def concat_model() -> onnx.ModelProto:
    """Two conv branches joined by a Concat that a conv reads in INT8. One branch is 20x smaller
    and carries a 40x finer scale: unifying the group at the largest scale (scale-groups)
    quantizes it coarsely, a loss the guard can see on the Concat output (a graph output)."""
    g = G(c=4, hw=8, seed=3)
    x = g.op("Relu", ["x"], "xr")
    a = g.op("Relu", [g.conv(g.q(x, 0.02, "qa_in"), name="ca")], "ra")
    small = g.op("Mul", [a, g.const(np.float32(0.05))], "small")
    b = g.op("Relu", [g.conv(g.q(x, 0.02, "qb_in"), name="cb")], "rb")
    cat = g.op("Concat", [g.q(small, 0.0005, "qs"), g.q(b, 0.02, "qb")], "cat", axis=1)
    head = g.conv(g.q(cat, 0.02, "qcat"), cout=4, cin=8, name="head")
    return g.model([cat, head])


def samples() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).random((4, 4, 8, 8), dtype=np.float32) * 2}


def test_guard_reports_each_non_exact_rule_effect_and_keeps_the_output() -> None:
    m = concat_model()
    # one non-exact rule that changes something (shift-relu-range would re-centre the Relu)
    rules = without(load_ruleset("tensorrt"), ["shift-relu-range"])
    plain, _ = optimize(m, rules)
    out, rep = optimize(m, rules, samples=samples())
    # without a limit the guard only measures: the model is what the rules made
    assert out.SerializeToString() == plain.SerializeToString()
    g = rep.guard
    assert g is not None and g["reference"] == "input, quantization off" and g["samples"] == 4
    assert set(g) >= {
        "sqnr_input_db",
        "sqnr_all_rules_db",
        "sqnr_output_db",
        "loss_db",
        "max_loss_db",
        "effects",
        "backed_out",
        "problems_after",
    }
    counts = {r.rule_id: r.count for r in rep.results}
    assert counts["merge-duplicate-q"] and counts["scale-groups"]
    effects = {e["rule_id"]: e for e in g["effects"]}
    # exact (cleanup) rules and rules that changed nothing are not measured
    assert set(effects) == {"scale-groups"}
    sg = effects["scale-groups"]
    assert sg["effect_db"] < -0.5 and not sg["required"] and sg["changes"] == 1
    assert sg["sqnr_without_db"] == pytest.approx(g["sqnr_input_db"], abs=1e-3)
    assert g["loss_db"] == pytest.approx(-sg["effect_db"], abs=1e-3)
    assert g["backed_out"] == [] and g["problems_after"] is None
    assert json.loads(rep.to_json())["guard"]["effects"][0]["rule_id"] == "scale-groups"


def test_max_loss_backs_out_the_costly_rule_and_says_what_lint_finds() -> None:
    m = concat_model()
    out, rep = optimize(m, "tensorrt", samples=samples(), max_loss_db=0.5)
    g = rep.guard
    assert [b["rule_id"] for b in g["backed_out"]] == ["scale-groups"]
    assert g["sqnr_output_db"] >= g["sqnr_input_db"] - 0.5
    assert g["sqnr_output_db"] > g["sqnr_all_rules_db"] + 0.5
    assert scales_of(out)["qs_Q"] == pytest.approx(0.0005)  # the fine scale is kept
    assert any(p.startswith("[scale-groups] qs_Q") for p in g["problems_after"])
    assert rep.result("scale-groups") is None  # the report is that of the run without it
    onnx.checker.check_model(out, full_check=True)
    # a loose enough limit backs out nothing
    _, rep = optimize(m, "tensorrt", samples=samples(), max_loss_db=5.0)
    assert rep.guard["backed_out"] == [] and rep.guard["problems_after"] is None


def test_float_reference_is_used_when_given(tmp_path) -> None:
    m = concat_model()
    ref = tmp_path / "float.onnx"
    onnx.save(bypass_activation_qdq(m), ref)
    _, rep = optimize(m, "tensorrt", samples=samples(), reference=ref)
    _, rep_off = optimize(m, "tensorrt", samples=samples())
    assert rep.guard["reference"] == str(ref)
    assert rep.guard["sqnr_input_db"] == pytest.approx(rep_off.guard["sqnr_input_db"])
    other = bypass_activation_qdq(m)
    for o in other.graph.output:
        o.name = "renamed_" + o.name
    for n in other.graph.node:
        n.output[:] = ["renamed_" + o if o in ("y0", "y1") else o for o in n.output]
    with pytest.raises(InputError, match="shares no output name"):
        optimize(m, "tensorrt", samples=samples(), reference=other)


def redundant_rules(tmp_path):
    """The tensorrt set with scale-groups twice: leaving either out changes nothing."""
    p = tmp_path / "twice.yaml"
    p.write_text(
        "name: twice\nextends: tensorrt\nrules:\n"
        "  - id: scale-groups-again\n    why: The same rewrite under a second id.\n"
        "    match: {scope: graph}\n    action: unify_scale_groups\n"
    )
    return p


def test_no_single_rule_to_blame_fails(tmp_path) -> None:
    with pytest.raises(GuardFailed, match="no single rule is to blame") as exc:
        optimize(concat_model(), redundant_rules(tmp_path), samples=samples(), max_loss_db=0.5)
    assert exc.value.exit_code == 1 and "\n" not in str(exc.value)


def test_a_required_rule_is_never_backed_out(monkeypatch) -> None:
    monkeypatch.setitem(guard.REQUIRED_ACTIONS, "unify_scale_groups", "a test says so")
    with pytest.raises(GuardFailed, match=r"rule 'scale-groups' costs \d+\.\d+ dB and cannot be"):
        optimize(concat_model(), "tensorrt", samples=samples(), max_loss_db=0.5)


def test_max_loss_needs_samples() -> None:
    with pytest.raises(UsageError, match="needs samples"):
        optimize(concat_model(), "tensorrt", max_loss_db=1.0)


def test_pooled_sqnr() -> None:
    r = {"a": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}
    assert pooled_sqnr(r, r) == float("inf")
    t = {"a": np.ones(4, np.float32), "b": np.full(4, 0.1, np.float32)}
    assert pooled_sqnr(r, t) == pytest.approx(10 * np.log10(4 / 0.04))


def test_cli_guard_failure_writes_nothing(tmp_path, capsys) -> None:
    m = tmp_path / "in.onnx"
    onnx.save(concat_model(), m)
    data = tmp_path / "x.npz"
    np.savez(data, **samples())
    out, rep = tmp_path / "out.onnx", tmp_path / "rep.json"
    argv = ["optimize", str(m), str(out), "--rules", str(redundant_rules(tmp_path))]
    code = cli.main([*argv, "--inputs", str(data), "--report", str(rep), "--max-loss-db", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and not out.exists() and not rep.exists()
    assert len(err) == 1 and "no single rule is to blame" in err[0]
    # the same with the plain tensorrt set backs scale-groups out, prints and reports it
    argv = ["optimize", str(m), str(out), "--rules", "tensorrt", "--calibration-data", str(data)]
    code = cli.main([*argv, "--report", str(rep), "--max-loss-db", "0.5"])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "accuracy guard" in text and "guard: backed out scale-groups" in text
    assert "lint then finds" in text
    assert json.loads(rep.read_text())["guard"]["backed_out"][0]["rule_id"] == "scale-groups"
    code = cli.main(["optimize", str(m), str(tmp_path / "o2.onnx"), "--max-loss-db", "1"])
    assert code == 2 and "needs samples" in capsys.readouterr().err


def test_a_loss_without_a_limit_is_warned_not_silent() -> None:
    """Without --max-loss-db the guard keeps what the rules made, but a loss beyond
    WARN_LOSS_DB on the user's samples is said in one warning naming the costliest rule."""
    out, rep = optimize(concat_model(), "tensorrt", samples=samples())
    g = rep.guard
    assert g["loss_db"] > guard.WARN_LOSS_DB
    (w,) = [w for w in rep.warnings if w.startswith("the output loses")]
    assert f"{g['loss_db']:.2f} dB" in w and "scale-groups" in w and "--max-loss-db" in w
    # within the limit, or with a limit set, there is nothing to warn about
    _, rep = optimize(concat_model(), "tensorrt", samples=samples(), max_loss_db=5.0)
    assert not [w for w in rep.warnings if w.startswith("the output loses")]
