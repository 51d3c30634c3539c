"""fp16/bf16 graphs (ModelOpt's default output is opset 19 with fp16 scales): every rewrite writes
scales, biases, folded weights and new constants in the graph's float type, so the output passes
ONNX type inference and loads in ONNX Runtime. The cleanup set stays bit-exact in fp16."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from float_types import convert_float_type
from onnx import TensorProto, helper, numpy_helper

import cli
from qdq_optimizer.api import optimize
from qdq_optimizer.graph import QGraph

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
CASES = [
    ("yolov7-tiny-naive", "yolov7-tiny"),
    ("yolov7-tiny-naive-bn", "yolov7-tiny"),
    ("yolov7-tiny-ort", "yolov7-tiny"),
    ("yolov8ish-naive", "yolov8"),
    ("yolov8ish-ort", "yolov8"),
]


@cache
def fp16_model(name: str) -> onnx.ModelProto:
    return convert_float_type(onnx.load(MODELS / f"{name}.onnx"), TensorProto.FLOAT16)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    # ORT's own QDQ fusions (QLinearConcat) have no fp16 kernel: run the graph as written.
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"]
    )


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    sess = _session(model)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32).astype(np.float16)
    return sess.run(None, {inp.name: x})


def _float_inits(model: onnx.ModelProto) -> dict[str, int]:
    resize_params = {n.input[i] for n in model.graph.node if n.op_type == "Resize" for i in (1, 2)}
    return {
        t.name: t.data_type
        for t in model.graph.initializer
        if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE) and t.name not in resize_params
    }


def test_fixture_conversion_is_fp16():
    m = fp16_model("yolov7-tiny-naive")
    assert not _float_inits(m)
    assert QGraph.from_model(m).float_type == np.float16
    assert QGraph.from_model(onnx.load(MODELS / "yolov7-tiny-naive.onnx")).float_type == np.float32


@pytest.mark.parametrize("rules", ["cleanup", "tensorrt", "specific"])
@pytest.mark.parametrize("name,specific", CASES, ids=[c[0] for c in CASES])
def test_fp16_graph_optimizes_to_a_valid_fp16_graph(name, specific, rules):
    rules = specific if rules == "specific" else rules
    src = fp16_model(name)
    out, report = optimize(src, rules)
    onnx.checker.check_model(out, full_check=True)
    assert not _float_inits(out), "a rewrite wrote float32 constants into an fp16 graph"
    changed = sum(len(r.changes) for r in report.results)
    if rules != "cleanup":
        assert changed > 0  # the rules did rewrite something in fp16
    got = _run(out)
    assert all(np.all(np.isfinite(g.astype(np.float32))) for g in got)
    if rules == "cleanup":  # exact rewrites stay bit-exact in fp16 too
        want = _run(src)
        assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


def test_fp16_output_tracks_fp32_output():
    """The fp16 rewrite computes what the fp32 rewrite computes, as closely as the fp16 input
    tracks the fp32 input (fp16 rounding flips some int8 codes on these random-weight heads)."""
    from qdq_optimizer.verify import sqnr

    name, rules = "yolov7-tiny-naive-bn", "yolov7-tiny"
    x = np.random.default_rng(0).random([1, 3, 160, 160], dtype=np.float32)

    def run(m, x):
        sess = _session(m)
        return sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float32)

    src32, src16 = onnx.load(MODELS / f"{name}.onnx"), fp16_model(name)
    before = sqnr(run(src32, x), run(src16, x.astype(np.float16)))
    out32, _ = optimize(src32, rules)
    out16, _ = optimize(src16, rules)
    after = sqnr(run(out32, x), run(out16, x.astype(np.float16)))
    assert after > before - 1.5, (before, after)


def _bf16_matmul_model() -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(W float bf16 behind Q/DQ) -> Q/DQ -> y, all bf16, opset 19."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    bf = TensorProto.BFLOAT16

    def t(name, a, dt=bf):
        a = np.asarray(a, np.float32)
        return helper.make_tensor(name, dt, a.shape, a.flatten().tolist())

    inits = [
        t("w", w),
        t("ws", np.abs(w).max(0) / 127),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
        t("xs", 0.02),
        numpy_helper.from_array(np.int8(0), "xz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="xq"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="xd"),
        helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="wq", axis=1),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="wd", axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"),
    ]
    g = helper.make_graph(
        nodes,
        "bf16",
        [helper.make_tensor_value_info("x", bf, [2, 8])],
        [helper.make_tensor_value_info("y", bf, [2, 4])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def test_bf16_graph_new_constants_are_bf16():
    m = _bf16_matmul_model()
    onnx.checker.check_model(m, full_check=True)
    g = QGraph.from_model(m)
    assert g.float_type.name == "bfloat16"
    c = g.float_constant("s", np.float32(0.5))
    assert c.values.dtype.name == "bfloat16"
    mm = g.node("mm")
    g.set_input(mm, 1, gs.Constant("w2", np.ones((8, 4), np.float32)))
    assert mm.inputs[1].values.dtype.name == "bfloat16"  # float32 constants are cast on the way in
    out, _ = optimize(m, "tensorrt")
    onnx.checker.check_model(out, full_check=True)
    assert not _float_inits(out)


@pytest.mark.parametrize("mode", ["uint8", "int8-asym"])
def test_fp16_asymmetric_graph_converts_in_fp16(mode):
    """symmetric-int8's scales and re-inserted Clip bounds are fp16 in an fp16 graph too."""
    from ort_quant import float_cnn, ort_quantize, photos

    q16 = convert_float_type(ort_quantize(float_cnn("relu"), mode, photos("calib", 4)))
    out, report = optimize(q16, "tensorrt")
    onnx.checker.check_model(out, full_check=True)
    assert not _float_inits(out)
    implied = [n for n in out.graph.node if n.op_type == "Clip" and "saturation" not in n.name]
    assert len(implied) == 3  # the three deleted Relus (a removed output pair keeps its own clip)
    x = photos("val", 1).astype(np.float16)
    sess = _session(out)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.all(np.isfinite(y.astype(np.float32)))


def test_bf16_graph_optimizes_quietly(tmp_path, capfd):
    """graph-surgeon's per-constant bf16 cast warnings (212 lines on a ModelOpt bf16 RegNetY) are
    not passed on: the result keeps bf16, so they are not true of it."""
    src, out = tmp_path / "bf16.onnx", tmp_path / "out.onnx"
    onnx.save(_bf16_matmul_model(), src)
    capfd.readouterr()
    assert cli.main(["optimize", str(src), str(out)]) == 0
    printed = capfd.readouterr()
    assert "casted" not in printed.out + printed.err and "[W]" not in printed.out + printed.err
    assert not _float_inits(onnx.load(out))


def test_bf16_float_weights_behind_int8_input_are_quantized() -> None:
    """bfloat16 arrays have numpy kind 'V', not 'f': the float-weight rules took a bf16 weight
    for a non-float one and left it (4 convs of a ModelOpt bf16 YOLOv8n stayed unquantized)."""
    m = _bf16_matmul_model()
    nodes = [n for n in m.graph.node if n.name not in ("wq", "wd")]
    nodes[-1].input[1] = "w"  # the MatMul reads the bf16 float weight directly
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m, full_check=True)
    out, report = optimize(m, "tensorrt")
    onnx.checker.check_model(out, full_check=True)
    assert any(r.rule_id == "quantize-float-weights" and r.changes for r in report.results)
    by_out = {o: n for n in out.graph.node for o in n.output}
    mm = next(n for n in out.graph.node if n.op_type == "MatMul")
    assert by_out[mm.input[1]].op_type == "DequantizeLinear"
    assert not _float_inits(out)
