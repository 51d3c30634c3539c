"""The rule sets on the YOLO fixtures (naive pytorch-quantization, BN unfolded, ORT QDQ, already
right): lint clean afterwards, no quantized conv lost, fidelity kept on held-out real photographs
(with and without calibration data), idempotent, right stays."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.calibration import CalibrationData
from qdq_optimizer.dump import dump_model
from qdq_optimizer.graph import QGraph
from qdq_optimizer.guard import without
from qdq_optimizer.ruleset import load_ruleset
from qdq_optimizer.runtime import load_inputs, run
from qdq_optimizer.trt_patterns import is_ignored, is_quantized_weighted, is_weighted
from qdq_optimizer.verify import sqnr

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
RULES = {"yolov7-tiny": "yolov7-tiny", "yolov7": "yolov7", "yolov8ish": "yolov8"}
FORMS = ("naive", "naive-bn", "ort", "right")
CASES = [(m, f) for m in RULES for f in FORMS]
# Without calibration data the residual skips that TensorRT needs quantized borrow the scale of
# the conv input quantizer on the same tensor (MSE-calibrated: it clips) or of its C2f concat
# group. On the YOLOv8 fixture that costs ~1.4 dB; with --calibration-data the skip groups are
# sized from data and the criterion holds (the optimizer warns when it had to borrow).
MAX_POLICY_MARGIN_DB = {("yolov8ish", "naive"): 1.6, ("yolov8ish", "naive-bn"): 1.6}


def ids(case) -> str:
    return f"{case[0]}-{case[1]}"


@cache
def optimized(model: str, form: str) -> tuple[onnx.ModelProto, object]:
    return optimize(MODELS / f"{model}-{form}.onnx", RULES[model])


@cache
def calibration() -> CalibrationData:
    return CalibrationData.load(MODELS / "photos-calib-160.npz")


@cache
def calibrated(model: str, form: str) -> tuple[onnx.ModelProto, object]:
    return optimize(MODELS / f"{model}-{form}.onnx", RULES[model], calibration_data=calibration())


def outputs(model) -> np.ndarray:
    """Outputs on the ten held-out photographs (never seen by fixture or optimizer calibration)."""
    return run(model, load_inputs(MODELS / "photos-val-160.npz"))["outputs"]


@cache
def float_outputs(model: str) -> np.ndarray:
    return outputs(MODELS / f"{model}-float.onnx")


@cache
def input_sqnr(model: str, form: str) -> float:
    return sqnr(float_outputs(model), outputs(MODELS / f"{model}-{form}.onnx"))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_lint_is_clean_after_optimize(case) -> None:
    out, rep = optimized(*case)
    assert rep.converged
    assert lint(out, RULES[case[0]]) == []


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_no_quantized_weighted_op_loses_quantization(case) -> None:
    before = QGraph.from_model(onnx.load(MODELS / f"{case[0]}-{case[1]}.onnx"))
    after = QGraph.from_model(optimized(*case)[0])
    ignore = load_ruleset(RULES[case[0]]).ignore
    quantized = [
        n.name
        for n in before.topo_nodes()
        if is_quantized_weighted(before, n) and not is_ignored(n, ignore)
    ]
    assert quantized
    for name in quantized:
        assert is_quantized_weighted(after, after.node(name)), name
    n_weighted = sum(is_weighted(before, n) for n in before.topo_nodes())
    assert sum(is_weighted(after, n) for n in after.topo_nodes()) == n_weighted


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_optimizing_twice_gives_a_byte_identical_dump(case) -> None:
    out, _ = optimized(*case)
    again, rep = optimize(out, RULES[case[0]])
    assert rep.total_changes == 0
    assert dump_model(again) == dump_model(out)


@pytest.mark.parametrize("with_data", [False, True], ids=["max", "calibrated"])
@pytest.mark.parametrize("model", RULES)
def test_already_right_graphs_keep_their_placement(model, with_data) -> None:
    """A graph placed right keeps its placement: the one rule that may fire is
    shift-relu-range, which re-centres one-sided ranges (SiLU outputs read only by convs) onto
    all the int8 codes, an accuracy rewrite that must not lose accuracy; without it the graph
    comes out byte for byte as it went in."""
    src = onnx.load(MODELS / f"{model}-right.onnx")
    out, rep = (calibrated if with_data else optimized)(model, "right")
    assert {r.rule_id for r in rep.results if r.count} <= {"shift-relu-range"}
    assert sqnr(float_outputs(model), outputs(out)) >= input_sqnr(model, "right") - 0.1
    data = {"calibration_data": calibration()} if with_data else {}
    rules = without(load_ruleset(RULES[model]), ["shift-relu-range"])
    plain, plain_rep = optimize(MODELS / f"{model}-right.onnx", rules, **data)
    assert plain_rep.total_changes == 0
    assert dump_model(plain) == dump_model(src)


@pytest.mark.parametrize("with_data", [True, False], ids=["calibrated", "max"])
@pytest.mark.parametrize("case", [c for c in CASES if c[1] != "right"], ids=ids)
def test_fidelity_on_held_out_photographs(case, with_data) -> None:
    """Issue 3's criterion: SQNR against the float model on real photographs at most 0.5 dB below
    the input Q/DQ model's (with calibration data; data-free, the stated YOLOv8 margin); for ONNX
    Runtime QDQ inputs it rises."""
    before = input_sqnr(*case)
    after = sqnr(
        float_outputs(case[0]), outputs((calibrated if with_data else optimized)(*case)[0])
    )
    assert after >= before - (0.5 if with_data else MAX_POLICY_MARGIN_DB.get(case, 0.5)), (
        before,
        after,
    )
    if case[1] == "ort":
        assert after > before, (before, after)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] != "right"], ids=ids)
def test_calibration_data_changes_only_residual_skip_scales(case) -> None:
    """Calibration sizes the scale groups that hold residual skips (YOLOv8); the placement is the
    data-free one, everything else is byte-identical, lint is clean, a second run changes nothing."""
    out, rep = calibrated(*case)
    plain = optimized(*case)[0]
    assert lint(out, RULES[case[0]]) == []

    def kinds(m):  # op and first input; names qdqopt generates are numbered in visit order
        return {
            (n.op_type, re.sub(r"_qdqopt\d+", "", n.input[0] if n.input else ""))
            for n in m.graph.node
        }

    assert kinds(out) == kinds(plain)
    groups = next(r for r in rep.results if r.rule_id == "scale-groups")
    by_data = [c for c in groups.changes if "calibrated: residual skip" in c.detail]
    if case[0] == "yolov8ish":
        assert by_data
    else:  # no residual Adds: the data changes nothing
        assert not by_data and dump_model(out) == dump_model(plain)
    again, rep2 = optimize(out, RULES[case[0]], calibration_data=calibration())
    assert rep2.total_changes == 0
    assert dump_model(again) == dump_model(out)


@pytest.mark.parametrize("drop", [(0, 1), (4, 5), (3, 8)])
def test_calibration_holds_on_other_calibration_subsets(drop) -> None:
    """The criterion does not hang on the exact calibration set: leave two views out."""
    images = np.load(MODELS / "photos-calib-160.npz")["images"]
    keep = [i for i in range(len(images)) if i not in drop]
    for form in ("naive", "naive-bn"):
        out, _ = optimize(
            MODELS / f"yolov8ish-{form}.onnx", "yolov8", calibration_data={"images": images[keep]}
        )
        before = input_sqnr("yolov8ish", form)
        assert sqnr(float_outputs("yolov8ish"), outputs(out)) >= before - 0.5


@pytest.mark.parametrize("model", RULES)
def test_naive_graph_optimizes_to_the_seed_recipe_result(model) -> None:
    """The optimized naive export computes what the independent 'right' export (quantizers tied
    in PyTorch, skips quantized, head float) computes."""
    a = outputs(optimized(model, "naive")[0])
    b = outputs(optimized(model, "right")[0])
    assert sqnr(b, a) > 60
