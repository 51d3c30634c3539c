"""The rule sets on the YOLO fixtures (naive pytorch-quantization, BN unfolded, ORT QDQ, already
right): lint clean afterwards, no quantized conv lost, fidelity kept, idempotent, right stays."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.dump import dump_model
from qdq_optimizer.graph import QGraph
from qdq_optimizer.ruleset import load_ruleset
from qdq_optimizer.trt_patterns import is_ignored, is_quantized_weighted, is_weighted
from qdq_optimizer.verify import session, sqnr

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
RULES = {"yolov7-tiny": "yolov7-tiny", "yolov7": "yolov7", "yolov8ish": "yolov8"}
FORMS = ("naive", "naive-bn", "ort", "right")
CASES = [(m, f) for m in RULES for f in FORMS]
# Quantizing the residual skips and giving the C2f concat group one (max) scale is what TensorRT
# needs to fuse the Adds and drop the concat; on this input it costs fidelity (see the report).
MARGIN_DB = {("yolov8ish", "naive"): 1.5, ("yolov8ish", "naive-bn"): 1.5}


def ids(case) -> str:
    return f"{case[0]}-{case[1]}"


@cache
def optimized(model: str, form: str) -> tuple[onnx.ModelProto, object]:
    return optimize(MODELS / f"{model}-{form}.onnx", RULES[model])


@cache
def images() -> np.ndarray:
    return np.load(MODELS / "images-160.npz")["all"].astype(np.float32) / 255


def outputs(model) -> np.ndarray:
    sess = session(model)
    return np.concatenate([sess.run(None, {"images": im[None]})[0] for im in images()])


@cache
def float_outputs(model: str) -> np.ndarray:
    return outputs(MODELS / f"{model}-float.onnx")


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


@pytest.mark.parametrize("model", RULES)
def test_already_right_graphs_come_out_unchanged(model) -> None:
    src = onnx.load(MODELS / f"{model}-right.onnx")
    out, rep = optimized(model, "right")
    assert rep.total_changes == 0
    assert dump_model(out) == dump_model(src)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] != "right"], ids=ids)
def test_fidelity_on_images(case) -> None:
    """SQNR against the float model on 16 synthetic-shape images: at most 0.5 dB below the input
    Q/DQ model's; for ONNX Runtime QDQ inputs it rises."""
    model, form = case
    ref = float_outputs(model)
    before = sqnr(ref, outputs(MODELS / f"{model}-{form}.onnx"))
    after = sqnr(ref, outputs(optimized(model, form)[0]))
    assert after >= before - MARGIN_DB.get(case, 0.5), (before, after)
    if form == "ort":
        assert after > before, (before, after)


@pytest.mark.parametrize("model", RULES)
def test_naive_graph_optimizes_to_the_seed_recipe_result(model) -> None:
    """The optimized naive export computes what the independent 'right' export (quantizers tied
    in PyTorch, skips quantized, head float) computes."""
    a = outputs(optimized(model, "naive")[0])
    b = outputs(optimized(model, "right")[0])
    assert sqnr(b, a) > 60
