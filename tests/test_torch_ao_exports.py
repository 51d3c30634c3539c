"""PyTorch's own quantization (``torch.ao.quantization`` FX), exported by torch.onnx as its users
do: forms no ONNX-level quantizer writes. A converted model (``convert_fx``) computes its bias
zero points (``Cast(ConstantOfShape)``) and puts a ``Cast`` between each activation Q and DQ; a
fake-quant export reads zero points through ``Identity``, writes ``reduce_range`` (uint8 0..127)
as a ``Clip`` on the integers between Q and DQ, and its QAT ConvBn as ``Conv -> Div -> BN``.
Before, validation refused all of them (or a pre-pass crashed with exit 3); the held-out round
of torch.ao graphs passed 0 of 40. The models here are made by torch.ao itself."""

from __future__ import annotations

import io
import warnings
from functools import cache

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.computed_params import fold_computed_params
from qdq_optimizer.errors import InputError
from qdq_optimizer.guard import without
from qdq_optimizer.ruleset import load_ruleset

torch = pytest.importorskip("torch")  # installed by `make test` (the trainer's dependency)

SIZE = 16


def _net():
    class Net(torch.nn.Module):
        """Conv-BN-ReLU, a residual block, a classifier: what the forms attach to."""

        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.b1 = torch.nn.BatchNorm2d(8)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.b2 = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = torch.relu(y + self.b2(self.c2(y)))
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # BN statistics that are not the identity
        for bn in (net.b1, net.b2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return net


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def _export(model) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.from_numpy(_images(1)),), buf, opset_version=13, dynamo=False,
            input_names=["images"], output_names=["outputs"],
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


@cache
def exported(form: str) -> onnx.ModelProto:
    """``x86``: convert_fx of the default x86 PTQ; ``fake-quant``: prepare_qat_fx with the x86
    QAT qconfig's plain FakeQuantize (version 0), observers off, exported as it stands."""
    from torch.ao.quantization import (
        QConfigMapping,
        get_default_qat_qconfig,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

    x = torch.from_numpy(_images(8, seed=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if form == "x86":
            prepared = prepare_fx(_net().eval(), get_default_qconfig_mapping("x86"), (x[:1],))
            with torch.no_grad():
                prepared(x)
            return _export(convert_fx(prepared))
        qconfig = QConfigMapping().set_global(get_default_qat_qconfig("x86", version=0))
        prepared = prepare_qat_fx(_net().train(), qconfig, (x[:1],))
        with torch.no_grad():
            prepared(x)
        prepared.eval()
        prepared.apply(torch.ao.quantization.disable_observer)
        return _export(prepared)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"images": x[i : i + 1]})[0] for i in range(len(x))])


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


FORMS = ("x86", "fake-quant")


@pytest.mark.parametrize("form", FORMS)
def test_the_forms_are_what_torch_writes(form: str) -> None:
    """The test models hold the forms this module is about (a torch release that changes its
    export changes what is tested: this fails first)."""
    ops = _ops(exported(form))
    if form == "x86":
        assert "ConstantOfShape" in ops and "Cast" in ops
    else:
        assert "Clip" in ops and "Div" in ops and "Identity" in ops


@pytest.mark.parametrize("form", FORMS)
def test_pre_pass_is_exact(form: str) -> None:
    model = exported(form)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    folded, note = fold_computed_params(copy)
    assert note and "exact" in note
    onnx.checker.check_model(folded, full_check=True)
    ops = _ops(folded)
    assert "ConstantOfShape" not in ops and "Cast" not in ops
    if form == "fake-quant":  # the Clip moved in front of its Q, on the floats
        for n in folded.graph.node:
            if n.op_type == "Clip":
                assert any(q.op_type == "QuantizeLinear" and n.output[0] in q.input
                           for q in folded.graph.node)  # fmt: skip
    x = _images(16)
    np.testing.assert_array_equal(_run(folded, x), _run(model, x))  # bit for bit


@pytest.mark.parametrize("form", FORMS)
def test_optimize_takes_torch_ao_exports(form: str) -> None:
    model = exported(form)
    out, report = optimize(model, "tensorrt")
    onnx.checker.check_model(out, full_check=True)
    assert lint(out) == [] and report.remaining_problems == []
    weighted = [n for n in out.graph.node if n.op_type in ("Conv", "Gemm")]
    producers = {o: n for n in out.graph.node for o in n.output}
    for op in weighted:  # every conv / GEMM still reads int8 data and int8 weights
        for t in op.input[:2]:
            assert producers[t].op_type == "DequantizeLinear", (op.name, t)
    assert "BatchNormalization" not in _ops(out) and "Div" not in _ops(out)  # fold-bn, via Div
    x = _images(16)
    a, b = _run(out, x), _run(model, x)
    assert 10 * np.log10(np.sum(b**2) / np.sum((a - b) ** 2)) > 20  # the same network


def _activation_scales(model: onnx.ModelProto) -> list[float]:
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"}
    scales = []
    for n in model.graph.node:
        src = n.input[0] if n.op_type == "QuantizeLinear" else None
        if src is None or src in inits:
            continue  # weights
        t = inits.get(n.input[1]) or consts.get(n.input[1])
        scales.append(float(numpy_helper.to_array(t).reshape(-1)[0]))
    return scales


def test_reduce_range_pairs_keep_their_step() -> None:
    """A uint8 0..127 pair (reduce_range) becomes int8 with its own step: the Clip moved before the
    Q bounds the values at 127 steps, so the symmetric scale need not cover 0..255."""
    model = exported("fake-quant")
    before = set(_activation_scales(model))
    # symmetric-int8's sizing alone: shift-relu-range would halve the steps it re-centres
    out, report = optimize(model, without(load_ruleset("tensorrt"), ["shift-relu-range"]))
    after = _activation_scales(out)
    assert after and set(after) <= before  # no step grew (a uint8 0..255 pair's would double)
    assert any("up to 1.00x the original" in w for w in report.warnings)


def test_fold_bn_through_a_channel_division() -> None:
    """Conv -> Div(per-channel) -> BN folds as BN(y / f): int8 weights kept, output unchanged."""
    rng = np.random.default_rng(0)
    c = 4
    wq = rng.integers(-127, 128, (c, 3, 3, 3)).astype(np.int8)
    ws = (rng.random(c) * 0.01 + 0.005).astype(np.float32)
    f = (rng.random((1, c, 1, 1)) + 0.5).astype(np.float32)
    bn = [rng.random(c).astype(np.float32) + 0.5, rng.standard_normal(c).astype(np.float32),
          rng.standard_normal(c).astype(np.float32), rng.random(c).astype(np.float32) + 0.5]  # fmt: skip
    inits = [
        numpy_helper.from_array(np.float32(1 / 127), "xs"),
        numpy_helper.from_array(np.int8(0), "xz"),
        numpy_helper.from_array(wq, "wq"),
        numpy_helper.from_array(ws, "ws"),
        numpy_helper.from_array(np.zeros(c, np.int8), "wz"),
        numpy_helper.from_array(f, "f"),
        *(numpy_helper.from_array(v, k) for k, v in zip(("g", "b", "m", "v"), bn, strict=True)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "xs", "xz"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="wdq", axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["y", "f"], ["yf"], name="div"),
        helper.make_node("BatchNormalization", ["yf", "g", "b", "m", "v"], ["outputs"], name="bn"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, [1, c, 8, 8])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out, report = optimize(model, "tensorrt")
    assert [n.op_type for n in out.graph.node if n.op_type in ("Div", "BatchNormalization")] == []
    fold = [c for r in report.results if r.rule_id == "fold-bn" for c in r.changes]
    assert len(fold) == 1 and "div" in fold[0].nodes and "Div" in fold[0].detail
    new_w = next(
        numpy_helper.to_array(t) for t in out.graph.initializer if list(t.dims) == [c, 3, 3, 3]
    )
    assert new_w.dtype == np.int8
    np.testing.assert_array_equal(np.abs(new_w), np.abs(wq))  # the integers TensorRT sees
    x = np.random.default_rng(1).random((4, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-4, atol=1e-4)


def test_uncomputable_parameter_is_refused_before_any_pre_pass() -> None:
    """A zero point computed from something other than constants is refused with validation's
    one line, also with --reference (whose pre-pass used to read the model first and crash)."""
    model = onnx.ModelProto()
    model.CopyFrom(exported("fake-quant"))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    model.graph.node.insert(0, helper.make_node("Abs", [q.input[2]], ["zp_abs"], name="abs"))
    q.input[2] = "zp_abs"
    with pytest.raises(InputError, match="non-constant zero point 'zp_abs'"):
        optimize(model, "tensorrt", reference=exported("fake-quant"))


def _float_model() -> onnx.ModelProto:
    return _export(_net().eval())


def test_converted_reduce_range_keeps_its_step_with_calibration_data() -> None:
    """convert_fx's pairs are uint8 0..255 whose scales were sized for 0..127 (reduce_range): the
    full conversion doubles their step; with calibration samples showing the data stay in half
    the codes, the step stays near the original and the output is closer to the float model."""
    from qdq_optimizer.guard import without
    from qdq_optimizer.ruleset import load_ruleset

    model, x = exported("x86"), _images(16, seed=3)
    calib = {"images": _images(8, seed=2)}  # what the producer calibrated on
    # without shift-relu-range, which gives one-sided pairs all the codes either way
    rules = without(load_ruleset("tensorrt"), ["shift-relu-range"])
    plain, plain_report = optimize(model, rules)
    tuned, tuned_report = optimize(model, rules, calibration_data=calib)

    def step(report) -> float:
        w = next(w for w in report.warnings if w.startswith("symmetric-int8"))
        return float(w.split("the int8 step is up to ")[1].split("x")[0])

    assert step(plain_report) > 2.0 and step(tuned_report) < 1.5
    want = _run(_float_model(), x)

    def sqnr(m: onnx.ModelProto) -> float:
        got = _run(m, x)
        return 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2))

    assert sqnr(tuned) > sqnr(plain) + 1.0
    assert lint(tuned) == []


def test_calibrated_scale_moves_only_half_used_ranges() -> None:
    from qdq_optimizer.asymmetric import calibrated_scale

    assert calibrated_scale(2.0, 1.0, 200.0) == 2.0  # the data fill the range: unchanged
    assert calibrated_scale(2.0, 1.0, 150.0) == pytest.approx(150 / 127)  # cover what was seen
    assert calibrated_scale(2.0, 1.0, 50.0) == 1.0  # never finer than the original step
    assert calibrated_scale(1.0, 1.0, 50.0) == 1.0
    assert calibrated_scale(1.2, 1.0, 50.0) == 1.2  # the conversion keeps about the step: as is
