"""``qdqopt optimize`` and ``qdqopt lint`` end to end: outputs, reports, exit codes, no debris."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from qdq_builders import messy_model  # noqa: I001

import cli


@pytest.fixture()
def messy_path(tmp_path) -> Path:
    p = tmp_path / "in" / "messy.onnx"
    p.parent.mkdir()
    onnx.save(messy_model(), p)
    return p


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_optimize_writes_model_report_and_table(tmp_path, messy_path, capsys):
    before = _digest(messy_path)
    out, rep = tmp_path / "out.onnx", tmp_path / "report.json"
    code = cli.main(
        [
            "optimize",
            str(messy_path),
            str(out),
            "--rules",
            "cleanup",
            "--report",
            str(rep),
            "-v",
            "--verify",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "collapse-dq-q" in text and "stem_out_DQ, c1_in_Q" in text  # -v lists node names
    assert "nodes 30 -> 25, Q 7 -> 5, DQ 13 -> 10" in text
    assert "SQNR dB" in text and "inf" in text  # exact rules: identical outputs
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert len(model.graph.node) == 25
    report = json.loads(rep.read_text())
    assert report["total_changes"] == 4 and report["converged"] is True
    assert {r["rule_id"]: r["count"] for r in report["results"]}["drop-dead-qdq"] == 1
    assert report["verify"][0]["max_abs_diff"] == 0.0 and report["verify"][0]["sqnr_db"] == "inf"
    assert _digest(messy_path) == before  # input untouched
    assert _files(tmp_path) == {"in", "out.onnx", "report.json"}  # no temp files left


def test_optimize_without_verbose_hides_node_names(tmp_path, messy_path, capsys):
    assert (
        cli.main(["optimize", str(messy_path), str(tmp_path / "o.onnx"), "--rules", "cleanup"]) == 0
    )
    assert "stem_out_DQ" not in capsys.readouterr().out


def test_verify_with_inputs_file(tmp_path, messy_path, capsys):
    npz = tmp_path / "x.npz"
    np.savez(npz, images=np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32))
    out = tmp_path / "o.onnx"
    args = [
        "optimize",
        str(messy_path),
        str(out),
        "--rules",
        "cleanup",
        "--verify",
        "--inputs",
        str(npz),
    ]
    assert cli.main(args) == 0
    assert "head_out" in capsys.readouterr().out
    np.savez(npz, wrong=np.zeros(3, dtype=np.float32))
    out.unlink()
    assert cli.main(args) == 2
    assert "lacks graph input(s): images" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_writes_nothing(tmp_path, messy_path, capsys):
    out = tmp_path / "o.onnx"
    assert cli.main(["optimize", str(messy_path), str(out), "--rules", "cleanup", "--dry-run"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(dry run: first pass only)" in text
    # one read-only pass cannot know the fixpoint: the summary must not claim one
    assert "would make" in text and "first pass" in text and "fixpoint" not in text
    assert not out.exists()
    assert cli.main(["optimize", str(messy_path), "--rules", "cleanup", "--dry-run"]) == 0


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t, i: [str(i), str(i)], "must differ from the input"),
        (lambda t, i: [str(i), str(t / "nope" / "o.onnx")], "output folder does not exist"),
        (lambda t, i: [str(t / "missing.onnx"), str(t / "o.onnx")], "not found"),
        (lambda t, i: [str(t / "junk.onnx"), str(t / "o.onnx")], "junk.onnx"),
        (lambda t, i: [str(i)], "missing OUT"),
        (lambda t, i: [str(i), str(t / "o.onnx"), "--ignore", "(["], "bad regex"),
        (
            lambda t, i: [str(i), str(t / "o.onnx"), "--report", str(t / "nope" / "r.json")],
            "does not exist",
        ),
        (lambda t, i: [str(i), str(t / "o.onnx"), "--rules", "no-such-rules"], "unknown rule set"),
    ],
)
def test_bad_input_exit_2_nothing_written(tmp_path, messy_path, capsys, make_args, message):
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    before = _digest(messy_path)
    listing = _files(tmp_path)
    args = make_args(tmp_path, messy_path)
    if "--rules" not in args:
        args += ["--rules", "cleanup"]
    code = cli.main(["optimize", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1  # one line
    assert _files(tmp_path) == listing and _digest(messy_path) == before


def test_truncated_model_is_bad_input(tmp_path, messy_path, capsys):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(messy_path.read_bytes()[:-200])
    assert cli.main(["optimize", str(cut), str(tmp_path / "o.onnx"), "--rules", "cleanup"]) == 2
    assert not (tmp_path / "o.onnx").exists()


def test_lint_exit_codes_and_json(tmp_path, messy_path, capsys):
    assert cli.main(["lint", str(messy_path), "--rules", "cleanup"]) == 1
    captured = capsys.readouterr()
    assert "[collapse-dq-q] stem_out_DQ, c1_in_Q:" in captured.out
    assert "3 problem(s)" in captured.out
    assert cli.main(["lint", str(messy_path), "--rules", "cleanup", "--format", "json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert {p["rule_id"] for p in payload["problems"]} == {
        "collapse-dq-q",
        "merge-duplicate-q",
        "drop-dead-qdq",
    }
    out = tmp_path / "o.onnx"
    assert cli.main(["optimize", str(messy_path), str(out), "--rules", "cleanup"]) == 0
    capsys.readouterr()
    assert cli.main(["lint", str(out), "--rules", "cleanup"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    assert cli.main(["lint", str(messy_path), "--rules", "cleanup", "--ignore", "."]) == 0


def test_max_iterations_flag(tmp_path, messy_path, capsys):
    out = tmp_path / "o.onnx"
    assert (
        cli.main(
            ["optimize", str(messy_path), str(out), "--rules", "cleanup", "--max-iterations", "1"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "did not reach a fixpoint within 1 iterations" in err
    assert out.exists()  # the model is still valid, only possibly not fully optimized
    assert cli.main(["optimize", str(messy_path), str(out), "--max-iterations", "0"]) == 2


def test_lint_trt_checks_follow_the_rule_set(tmp_path, messy_path, capsys):
    """TensorRT checks run for rule sets extending tensorrt (or on request), not for cleanup."""
    pytest.importorskip("qdq_optimizer.trt_checks")
    assert cli.main(["lint", str(messy_path), "--rules", "cleanup", "--format", "json"]) == 1
    ids = {p["rule_id"] for p in json.loads(capsys.readouterr().out)["problems"]}
    assert not any(i.startswith("trt-") for i in ids)
    args = ["lint", str(messy_path), "--rules", "cleanup", "--format", "json", "--checks", "on"]
    assert cli.main(args) == 1
    ids = {p["rule_id"] for p in json.loads(capsys.readouterr().out)["problems"]}
    assert any(i.startswith("trt-") for i in ids)


def test_verify_against_float_reference(tmp_path, messy_path, capsys):
    from qdq_optimizer.verify import sqnr

    assert sqnr(np.ones(4), np.ones(4)) == float("inf")
    assert sqnr(np.array([3.0, 4.0]), np.array([3.0, 3.0])) == pytest.approx(10 * np.log10(25))
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    args = ["optimize", str(messy_path), str(out), "--rules", "cleanup", "--verify"]
    args += ["--reference", str(messy_path), "--report", str(rep)]
    assert cli.main(args) == 0
    assert "out vs ref dB" in capsys.readouterr().out
    entry = json.loads(rep.read_text())["verify"][0]
    assert entry["sqnr_vs_reference_db"] == {"input": "inf", "output": "inf"}


def test_allow_asymmetric_is_an_accepted_no_op(tmp_path, messy_path, capsys):
    """Deprecated (issue 10): asymmetric input is always converted; old scripts keep working
    and get the same model."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli.main(["optimize", str(messy_path), str(a), "--rules", "tensorrt"]) == 0
    assert (
        cli.main(["optimize", str(messy_path), str(b), "--rules", "tensorrt", "--allow-asymmetric"])
        == 0
    )
    assert _digest(a) == _digest(b)
    assert cli.main(["lint", str(b), "--rules", "tensorrt", "--allow-asymmetric"]) == 0
    assert "--allow-asymmetric" not in capsys.readouterr().out


def test_verify_runs_each_model_once_and_agrees_with_the_pairwise_functions(
    tmp_path, messy_path, monkeypatch
):
    """``optimize --verify --reference`` used to run the input three times and the output twice;
    ``verify_rewrite`` runs input, output and reference once each, with the same numbers as
    ``compare`` and ``against_reference``."""
    from qdq_optimizer import api, verify

    out, _ = api.optimize(str(messy_path), "tensorrt")
    ref = api.load(str(messy_path))
    expected = [c.to_dict() for c in verify.compare(str(messy_path), out, None, 3)]
    vs_ref = verify.against_reference(ref, {"input": str(messy_path), "output": out}, None, 3)
    opened = []
    real_session = verify.session
    monkeypatch.setattr(verify, "session", lambda m: opened.append(m) or real_session(m))
    entries = verify.verify_rewrite(str(messy_path), out, None, 3, ref)
    assert len(opened) == 3
    assert [
        {k: v for k, v in e.items() if k != "sqnr_vs_reference_db"} for e in entries
    ] == expected
    by_name = {r["name"]: r["sqnr_db"] for r in vs_ref}
    for e in entries:
        want = {k: verify.json_db(v) for k, v in by_name[e["name"]].items()}
        assert e["sqnr_vs_reference_db"] == want


def test_an_all_zero_reference_reads_minus_inf_not_inf():
    """SQNR against an all-zero reference that the test misses is -inf: the worst value, not
    the 'identical' inf it was written as in reports."""
    from qdq_optimizer.verify import OutputComparison, json_db, sqnr

    v = sqnr(np.zeros(3), np.ones(3))
    assert v == float("-inf") and json_db(v) == "-inf" and json_db(float("inf")) == "inf"
    assert OutputComparison("y", [3], 1.0, v).to_dict()["sqnr_db"] == "-inf"
    assert json_db(1.5) == 1.5


def test_reference_gives_per_tensor_int8_weights_their_float_values(tmp_path, capsys):
    """``--reference``: ONNX Runtime's per-tensor int8 weights are re-quantized per output
    channel from the float model (the verify table shows the output move towards it); lint of
    the input, which has no float model, warns about them but passes."""
    from tests.test_rules_weighted import _narrow_conv_weight, _per_tensor, _weighted_graph

    w = _narrow_conv_weight()
    q_path, f_path = tmp_path / "q.onnx", tmp_path / "f.onnx"
    onnx.save(_weighted_graph("Conv", w, _per_tensor(w), 0), q_path)
    onnx.save(_weighted_graph("Conv", w, None, 0, form="float"), f_path)
    out, rep = tmp_path / "out.onnx", tmp_path / "report.json"
    args = ["optimize", str(q_path), str(out), "--reference", str(f_path), "--report", str(rep)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "weight-per-channel" in text and "in vs ref dB" in text
    report = json.loads(rep.read_text())
    assert {r["rule_id"]: r["count"] for r in report["results"]}["weight-per-channel"] == 1
    vs = report["verify"][0]["sqnr_vs_reference_db"]
    assert vs["output"] > vs["input"] + 6, vs
    assert cli.main(["lint", str(q_path)]) == 0
    assert "warning [trt-weight-per-tensor] op: 1 of 1 weighted ops" in capsys.readouterr().out


def test_verify_reuses_the_guards_runs_on_the_same_inputs(tmp_path, monkeypatch):
    """With --inputs and --reference the guard runs the reference, the input and the result on
    the very samples --verify reads: verify compares those outputs instead of running the three
    models again, and its table is what a separate run gives."""
    import qdq_optimizer.runtime as runtime
    import qdq_optimizer.verify as verify
    from qdq_optimizer.verify import verify_rewrite
    from tests.test_rules_weighted import _narrow_conv_weight, _per_tensor, _weighted_graph

    w = _narrow_conv_weight()
    q_path, f_path, x_path = tmp_path / "q.onnx", tmp_path / "f.onnx", tmp_path / "x.npz"
    onnx.save(_weighted_graph("Conv", w, _per_tensor(w), 0), q_path)
    onnx.save(_weighted_graph("Conv", w, None, 0, form="float"), f_path)
    np.savez(x_path, x=np.random.default_rng(3).standard_normal((6, 4, 4, 4)).astype(np.float32))
    sessions = []
    real = runtime.session
    counted = lambda m: sessions.append(1) or real(m)  # noqa: E731
    monkeypatch.setattr(runtime, "session", counted)  # the guard's runs
    monkeypatch.setattr(verify, "session", counted)  # --verify's own runs
    out, rep = tmp_path / "out.onnx", tmp_path / "report.json"
    args = ["optimize", str(q_path), str(out), "--inputs", str(x_path), "--reference", str(f_path)]
    assert cli.main([*args, "--report", str(rep)]) == 0
    report = json.loads(rep.read_text())
    measured = len(report["guard"]["effects"])
    assert measured >= 1 and len(sessions) == 3 + measured  # reference, input, result, reruns
    again = verify_rewrite(q_path, onnx.load(out), dict(np.load(x_path)), 0, onnx.load(f_path))
    assert json.loads(json.dumps(again)) == report["verify"]
