"""Residual skips and calibration data on a pytorch-quantization-style ResNet (issue 10 item 5):
a skip with no quantizer at all gets ``max|x| / 127`` from the samples; a skip quantizer that
came with the input (MSE-calibrated by the producer) keeps its scale unless it clips worse."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import qdq_optimizer.actions.unify_scales as scale_groups_action
from qdq_optimizer.api import optimize
from qdq_optimizer.calibration import bypass_activation_qdq
from qdq_optimizer.graph import QGraph
from qdq_optimizer.guard import without
from qdq_optimizer.ruleset import load_ruleset
from qdq_optimizer.runtime import session
from qdq_optimizer.trt_patterns import residual_inputs
from tests.rules_util import G, count, scales_of

C, HW = 4, 8


def resnet(skip: float = 0.1, conv1_in: float = 0.05) -> onnx.ModelProto:
    """block 1 (identity skip with the producer's residual quantizer, scale ``skip``;
    conv1 reads the same tensor through its own quantizer, ``conv1_in``) -> block 2 (downsample
    branch: a 1x1 conv whose output reaches the Add with no quantizer at all)."""
    g = G(c=C, hw=HW, seed=11)
    t0 = g.op("Relu", ["x"], "t0")  # the block input: long-tailed (see _photos)
    b = g.op("Relu", [g.conv(g.q(t0, conv1_in, "conv1_in"), name="conv1", k=3)], "b1")
    b = g.conv(g.q(b, 0.05, "conv2_in"), name="conv2", k=3)
    t1 = g.op("Relu", [g.op("Add", [b, g.q(t0, skip, "residual")], "add1")], "t1")
    c = g.op("Relu", [g.conv(g.q(t1, 0.05, "conv3_in"), name="conv3", k=3)], "c1")
    c = g.conv(g.q(c, 0.05, "conv4_in"), name="conv4", k=3)
    d = g.conv(g.q(t1, 0.05, "down_in"), name="downsample")
    y = g.op("Relu", [g.op("Add", [c, d], "add2")], "t2")
    return g.model([y], inputs={"x": [1, C, HW, HW]})


GRID = 0.01  # the producer's skip scale: the bulk of the block input lies on its grid


def _samples(seed: int, n: int) -> dict[str, np.ndarray]:
    """Block inputs on the producer's grid (0..127 steps) with one rare value beyond its range:
    the case where a calibrator (MSE) clips on purpose and is right to."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 128, (n, C, HW, HW)).astype(np.float32) * np.float32(GRID)
    x[0, 0, 0, 0] = np.float32(GRID) * 140
    return {"x": x}


DATA = _samples(2, 8)


def _values(model: onnx.ModelProto, name: str) -> np.ndarray:
    """A tensor's values on DATA with activation quantization off (what calibration sees)."""
    m = bypass_activation_qdq(model)
    m.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = session(m)
    return np.concatenate([sess.run([name], {"x": s[None]})[0] for s in DATA["x"]])


def _mse(x: np.ndarray, s: float) -> float:
    s = np.float32(s)
    return float(np.mean((np.clip(np.rint(x / s), -128, 127) * s - x).astype(np.float64) ** 2))


def _add_skip_dq(model: onnx.ModelProto, add: str):
    graph = QGraph.from_model(model)
    node = graph.node(add)
    _, si = residual_inputs(graph, node)
    prod = {o: n for n in model.graph.node for o in n.output}
    return prod.get(node.inputs[si].name), node.inputs[si].name


def test_unquantized_downsample_skip_gets_max_over_127_from_data() -> None:
    m = resnet()
    dq, name = _add_skip_dq(m, "add2")
    # sibling conv branches: residual_inputs picks one as the skip; it has no quantizer
    assert name in ("downsample_out", "conv4_out") and dq.op_type == "Conv"
    plain, rep = optimize(m, "tensorrt")
    assert _add_skip_dq(plain, "add2")[0].op_type == "Conv"  # left float without data
    assert any("has no quantizer" in n for n in rep.result("residual-add").notes)
    out, rep = optimize(m, "tensorrt", calibration_data=DATA)
    dq, _ = _add_skip_dq(out, "add2")
    assert dq.op_type == "DequantizeLinear"
    peak = float(np.abs(_values(m, name)).max())
    assert scales_of(out, "DequantizeLinear")[dq.name] == pytest.approx(peak / 127, rel=1e-5)
    onnx.checker.check_model(out, full_check=True)
    again, rep2 = optimize(out, "tensorrt", calibration_data=DATA)
    assert rep2.total_changes == 0  # idempotent


def _group_scales(model: onnx.ModelProto) -> set[float]:
    """Scales of the quantizers reading t0 (the skip and conv1's input; merged once equal)."""
    s = scales_of(model)
    return {
        s[n.name]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] == "t0_out"
    }


def test_producer_skip_scale_kept_unless_it_clips_worse(monkeypatch) -> None:
    t0 = _values(resnet(), "t0_out")  # the same on every scale choice: quantization is off
    peak = float(np.abs(t0).max()) / 127
    # the producer's scale clips the one outlier and keeps the bulk exact: less error than peak
    assert GRID < peak and _mse(t0, GRID) < _mse(t0, peak)
    m = resnet(skip=GRID, conv1_in=GRID * 0.8)
    assert _group_scales(m) == {np.float32(GRID), np.float32(GRID * 0.8)}
    # scale-groups' choice alone: shift-relu-range would re-centre the Relu's group (half step)
    rules = without(load_ruleset("tensorrt"), ["shift-relu-range"])
    out, rep = optimize(m, rules, calibration_data=DATA)
    # the group (skip quantizer + conv1's input quantizer) takes the producer's skip scale
    assert sorted(_group_scales(out)) == [pytest.approx(GRID, rel=1e-6)]
    details = " ".join(c.detail for c in rep.result("scale-groups").changes)
    assert "the input's skip scale kept" in details
    # the max |x| policy alone would have raised both to the peak
    monkeypatch.setattr(scale_groups_action, "_producer_skip_scales", lambda *a: {})
    old, _ = optimize(m, rules, calibration_data=DATA)
    assert sorted(_group_scales(old)) == [pytest.approx(peak, rel=1e-5)]
    monkeypatch.undo()
    # a skip scale that clips much worse than max |x| / 127 is replaced by the covering scale
    bad = GRID * 0.2
    assert _mse(t0, bad) > _mse(t0, peak)
    out, rep = optimize(resnet(skip=bad, conv1_in=bad * 1.5), rules, calibration_data=DATA)
    assert sorted(_group_scales(out)) == [pytest.approx(peak, rel=1e-5)]
    assert "max |x|" in " ".join(c.detail for c in rep.result("scale-groups").changes)


def test_a_skip_behind_a_folded_batchnorm_is_sized_from_the_values_the_add_reads() -> None:
    """pytorch-quantization exports keep BatchNormalization: ``fold-bn`` folds it into the conv,
    which then computes the BN's output. The skip quantizer ``residual-add`` inserts there was
    sized from the pre-pass range of the conv's own output (the pre-BN values, 2-4x larger on
    ResNet-18/ResNeXt exports: -2.06 dB on a ResNeXt); the folded conv now produces the BN's
    output tensor, under its name, so the range read is the one of the values the Add gets."""
    g = G(c=C, hw=HW, seed=11)
    t0 = g.op("Relu", ["x"], "t0")
    bn_params = [np.full(C, v, np.float32) for v in (0.25, 0.0, 0.0, 1.0)]

    def conv_bn(x: str, name: str) -> str:
        y = g.conv(g.q(x, 0.05, f"{name}_in"), name=name, k=3)
        return g.op("BatchNormalization", [y, *(g.const(p) for p in bn_params)], f"{name}_bn")

    y = g.op("Relu", [g.op("Add", [conv_bn(t0, "conv4"), conv_bn(t0, "downsample")], "add")])
    m = g.model([y], inputs={"x": [1, C, HW, HW]})
    out, _ = optimize(m, "tensorrt", calibration_data=DATA)
    assert count(out, "BatchNormalization") == 0
    dq, _ = _add_skip_dq(out, "add")
    assert dq.op_type == "DequantizeLinear"
    q = {n.output[0]: n for n in out.graph.node}[dq.input[0]]
    producer = {o: n for n in out.graph.node for o in n.output}[q.input[0]]
    assert producer.op_type == "Conv" and q.input[0].endswith("_bn_out")
    peak_after_bn = float(np.abs(_values(m, q.input[0])).max())
    peak_before_bn = float(np.abs(_values(m, producer.name + "_out")).max())
    assert peak_before_bn > 3 * peak_after_bn
    assert scales_of(out, "DequantizeLinear")[dq.name] == pytest.approx(
        peak_after_bn / 127, rel=1e-5
    )
    np.testing.assert_allclose(_values(out, q.input[0]), _values(m, q.input[0]), atol=1e-5)
