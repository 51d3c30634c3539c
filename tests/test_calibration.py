"""Scales from data (``optimize --calibration-data``): sample feeding, the activation bypass, the
observed ranges, residual skips sized from data (a hand-built block and the YOLOv8 fixture), CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cli
from qdq_optimizer.api import optimize
from qdq_optimizer.calibration import (
    CalibrationData,
    bypass_activation_qdq,
    measure_ranges,
    observed_ranges,
)
from qdq_optimizer.errors import InputError
from qdq_optimizer.runtime import feed_batches, run, session
from qdq_optimizer.verify import sqnr

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
TINY = MODELS / "yolov7-tiny-naive.onnx"
V8 = MODELS / "yolov8ish-naive.onnx"


def relu_model(batch: int | str = 1) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 4, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def qdq_output_model() -> onnx.ModelProto:
    """x -> Q -> DQ -> y: the graph output sits behind an activation Q/DQ pair."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


# ----------------------------------------------------------------------------- feeding samples
def test_static_batch_takes_samples_one_run_each_and_scales_uint8() -> None:
    u8 = np.random.default_rng(0).integers(0, 256, (5, 3, 4, 4), dtype=np.uint8)
    feeds = feed_batches(session(relu_model()), {"x": u8})
    assert len(feeds) == 5
    for i, f in enumerate(feeds):
        assert f["x"].dtype == np.float32 and f["x"].shape == (1, 3, 4, 4)
        np.testing.assert_array_equal(f["x"], u8[i : i + 1].astype(np.float32) / 255)


def test_dynamic_batch_runs_all_at_once_or_in_chunks() -> None:
    x = np.random.default_rng(0).random((4, 3, 4, 4), dtype=np.float32)
    sess = session(relu_model("N"))
    assert len(feed_batches(sess, {"x": x})) == 1
    assert [f["x"].shape[0] for f in feed_batches(sess, {"x": x}, dynamic_batch=2)] == [2, 2]
    with pytest.raises(InputError, match="3 sample"):
        feed_batches(sess, {"x": x[:3]}, dynamic_batch=2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"x": np.zeros((3, 4, 4), np.float32)}, "rank 3; the model takes rank 4"),
        ({"other": np.zeros((1, 3, 4, 4), np.float32)}, "lacks graph input(s): x"),
        ({"x": np.zeros((0, 3, 4, 4), np.float32)}, "0 sample(s)"),
        ({"x": np.zeros((2, 3, 5, 4), np.float32)}, "samples of shape [3, 5, 4]; the model takes"),
        ({"x": np.full((1, 3, 4, 4), "a")}, "not numbers"),
        ({"x": np.full((1, 3, 4, 4), np.nan, np.float32)}, "NaN or infinite"),
    ],
)
def test_bad_samples_are_input_errors(data, message) -> None:
    with pytest.raises(InputError) as exc:
        feed_batches(session(relu_model()), data)
    assert message in str(exc.value)


def test_static_batch_of_two_and_integer_inputs() -> None:
    sess = session(relu_model(2))
    x = np.zeros((4, 3, 4, 4), np.float32)
    assert [f["x"].shape[0] for f in feed_batches(sess, {"x": x})] == [2, 2]
    with pytest.raises(InputError, match="3 sample"):
        feed_batches(sess, {"x": x[:3]})
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2])
    o = helper.make_tensor_value_info("o", TensorProto.INT64, [1, 2])
    g = helper.make_graph([helper.make_node("Identity", ["i"], ["o"])], "g", [i], [o])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(InputError, match="are float32; the model takes tensor"):
        feed_batches(session(m), {"i": np.zeros((1, 2), np.float32)})
    (feed,) = feed_batches(session(m), {"i": np.ones((1, 2), np.int32)})
    assert feed["i"].dtype == np.int64  # integers are widened, not scaled


def test_integer_samples_outside_an_integer_input_are_refused() -> None:
    """ModelOpt's --direct_io_types makes the graph input int8 (the quantized image): uint8
    photos cast to it would wrap (200 -> -56) into silent garbage, so they are refused."""
    i = helper.make_tensor_value_info("i", TensorProto.INT8, [1, 2])
    o = helper.make_tensor_value_info("o", TensorProto.INT8, [1, 2])
    g = helper.make_graph([helper.make_node("Identity", ["i"], ["o"])], "g", [i], [o])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(InputError, match=r"uint8 values 3..200, outside tensor\(int8\)"):
        feed_batches(session(m), {"i": np.array([[3, 200]], np.uint8)})
    (feed,) = feed_batches(session(m), {"i": np.array([[3, 127]], np.uint8)})
    assert feed["i"].tolist() == [[3, 127]] and feed["i"].dtype == np.int8


def test_run_joins_the_outputs_of_every_batch() -> None:
    x = np.random.default_rng(1).normal(size=(3, 3, 4, 4)).astype(np.float32)
    out = run(relu_model(), {"x": x})["y"]
    np.testing.assert_array_equal(out, np.maximum(x, 0))


# ----------------------------------------------------------------------------- bypass
def test_bypass_removes_activation_qdq_and_keeps_weight_qdq() -> None:
    naive = onnx.load(TINY)
    bypassed = bypass_activation_qdq(naive)
    onnx.checker.check_model(bypassed, full_check=True)
    consts = {t.name for t in bypassed.graph.initializer} | {
        o for n in bypassed.graph.node if n.op_type == "Constant" for o in n.output
    }
    qs = [n for n in bypassed.graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(q.input[0] in consts for q in qs)  # only weight quantizers remain

    def dqs(m):
        return sum(n.op_type == "DequantizeLinear" for n in m.graph.node)

    assert dqs(bypassed) == len(qs) < dqs(naive)
    # activations float, weights still int8: much closer to the float model than the naive graph
    x = {"images": np.load(MODELS / "photos-val-160.npz")["images"][:2]}
    ref = run(MODELS / "yolov7-tiny-float.onnx", x)["outputs"]
    assert sqnr(ref, run(bypassed, x)["outputs"]) > sqnr(ref, run(naive, x)["outputs"]) + 5
    assert len(naive.graph.node) > len(bypassed.graph.node)  # the input model is untouched
    assert any(n.op_type == "QuantizeLinear" and n.input[0] not in consts for n in naive.graph.node)


def test_bypass_keeps_a_graph_output_name_behind_a_pair() -> None:
    bypassed = bypass_activation_qdq(qdq_output_model())
    assert [o.name for o in bypassed.graph.output] == ["y"]
    x = np.linspace(-3, 3, 8, dtype=np.float32)[None]
    np.testing.assert_array_equal(run(bypassed, {"x": x})["y"], x)  # exact: no rounding left


# ----------------------------------------------------------------------------- observed ranges
def test_observed_ranges_are_the_largest_values_with_quantization_off() -> None:
    naive = onnx.load(TINY)
    bypassed = bypass_activation_qdq(naive)
    acts = [n.input[0] for n in naive.graph.node if n.op_type == "QuantizeLinear"]
    acts = [a for a in acts if a != "images" and not a.endswith("weight")][:3]
    data = CalibrationData({"images": np.load(MODELS / "photos-calib-160.npz")["images"][:3]})
    got = observed_ranges(naive, [acts[:2], acts[2:3], ["images"]], data)
    assert data.runs == 3
    m = onnx.ModelProto()
    m.CopyFrom(bypassed)
    for a in acts:
        m.graph.output.append(helper.make_empty_tensor_value_info(a))
    sess = session(m)
    peak = dict.fromkeys(acts, 0.0)
    for f in feed_batches(sess, data.arrays):
        for a, v in zip(acts, sess.run(acts, f), strict=True):
            peak[a] = max(peak[a], float(np.abs(v).max()))
    assert got[0] == pytest.approx(max(peak[acts[0]], peak[acts[1]]), rel=1e-6)
    assert got[1] == pytest.approx(peak[acts[2]], rel=1e-6)
    assert got[2] == pytest.approx(float(data.arrays["images"].max()) / 255, rel=1e-6)


def residual_block(skip_scale: float = 0.01) -> onnx.ModelProto:
    """x -> Q/DQ -> conv1 -> Relu = t;  t -> Q/DQ(skip_scale) -> conv2 -> Relu = b;  y = t + b.

    The naive form: t is quantized only for conv2, with a small (clipping) scale, and the skip
    input of the Add is float."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = []

    def qdq(src: str, scale: float, name: str) -> str:
        inits.append(numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"))
        nodes.append(helper.make_node("QuantizeLinear", [src, f"{name}_s", "z"], [f"{name}_q"]))
        nodes.append(
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", "z"], [f"{name}_dq"])
        )
        return f"{name}_dq"

    def conv(src: str, name: str) -> str:
        w = rng.integers(-127, 128, (4, 4, 3, 3), dtype=np.int8)
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        inits.append(numpy_helper.from_array(np.full(4, 0.01, np.float32), f"{name}_ws"))
        inits.append(numpy_helper.from_array(np.zeros(4, np.int8), f"{name}_wz"))
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_w", f"{name}_ws", f"{name}_wz"],
                [f"{name}_wdq"],
                axis=0,
            )
        )
        nodes.append(helper.make_node("Conv", [src, f"{name}_wdq"], [f"{name}_c"], pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        return f"{name}_r"

    t = conv(qdq("x", 1 / 127, "in"), "conv1")
    b = conv(qdq(t, skip_scale, "mid"), "conv2")
    nodes.append(helper.make_node("Add", [t, b], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    g = helper.make_graph(nodes, "block", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _skip_scale(model: onnx.ModelProto) -> float:
    (add,) = [n for n in model.graph.node if n.op_type == "Add"]
    dqs = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant"
    }
    (skip,) = [i for i in add.input if i in dqs]
    name = dqs[skip].input[1]
    return float(values.get(name, consts.get(name)))


def test_a_borrowed_skip_scale_is_sized_from_data() -> None:
    model = residual_block(skip_scale=0.01)
    data = {"x": np.random.default_rng(1).random((4, 4, 8, 8), dtype=np.float32)}  # 4 samples
    plain, rep = optimize(model, "tensorrt")
    assert _skip_scale(plain) == pytest.approx(0.01)  # borrowed from conv2's input quantizer
    assert any("borrowed" in w for w in rep.warnings)
    out, rep = optimize(model, "tensorrt", calibration_data=data)
    assert not any("borrowed" in w for w in rep.warnings)
    float_block = bypass_activation_qdq(model)
    float_block.graph.output.append(helper.make_empty_tensor_value_info("conv1_r"))
    t = np.concatenate(
        [session(float_block).run(["conv1_r"], {"x": s[None]})[0] for s in data["x"]]
    )
    assert float(np.abs(t).max()) > 0.01 * 127  # the borrowed scale clipped the skip
    assert _skip_scale(out) == pytest.approx(float(np.abs(t).max()) / 127, rel=1e-5)
    again, rep2 = optimize(out, "tensorrt", calibration_data=data)
    assert rep2.total_changes == 0  # idempotent: the group agrees and gained no skip quantizer


def test_the_pre_pass_hands_ranges_to_the_rules() -> None:
    """measure_ranges runs once before the rules; the rules read its ranges from settings, so
    the same ranges without samples give the same model (the rules run no model)."""
    model = residual_block(skip_scale=0.01)
    data = {"x": np.random.default_rng(1).random((4, 4, 8, 8), dtype=np.float32)}
    calib = CalibrationData(dict(data))
    ranges = measure_ranges(model, calib)
    assert calib.runs == 4
    assert ranges["mid_dq"] == ranges["conv1_r"] > 0.01 * 127  # a bypassed DQ: its Q input's range
    assert ranges["x"] == pytest.approx(float(data["x"].max()))
    from_samples, _ = optimize(model, "tensorrt", calibration_data=data)
    settings = {"scale_policy": "calibrated", "observed_ranges": ranges, "observed_runs": 4}
    from_ranges, rep = optimize(model, "tensorrt", settings=settings)
    assert _skip_scale(from_ranges) == _skip_scale(from_samples)
    assert from_ranges.SerializeToString() == from_samples.SerializeToString()
    groups = next(r for r in rep.results if r.rule_id == "scale-groups")
    assert any("in 4 batch(es)" in c.detail for c in groups.changes)


# ----------------------------------------------------------------------------- API and CLI
def test_api_takes_arrays_and_reports_calibrated_skip_groups() -> None:
    data = {"images": np.load(MODELS / "photos-calib-160.npz")["images"][:2]}
    _, rep = optimize(V8, "yolov8", calibration_data=data)
    groups = next(r for r in rep.results if r.rule_id == "scale-groups")
    details = [c.detail for c in groups.changes]
    assert any(
        "(calibrated: residual skip, max |x|" in d and "in 2 batch(es)" in d for d in details
    )
    with pytest.raises(InputError, match="not found"):
        optimize(V8, "yolov8", calibration_data=MODELS / "missing.npz")


def test_cli_calibration_data(tmp_path, capsys) -> None:
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    args = ["optimize", str(V8), str(out), "--rules", "yolov8", "--report", str(rep)]
    assert cli.main(args) == 0
    assert "residual skip(s) were quantized with a scale borrowed" in capsys.readouterr().err
    out.unlink()
    calib = str(MODELS / "photos-calib-160.npz")
    assert cli.main([*args, "--calibration-data", calib]) == 0
    assert "borrowed" not in capsys.readouterr().err
    details = [
        c["detail"]
        for r in json.loads(rep.read_text())["results"]
        if r["rule_id"] == "scale-groups"
        for c in r["changes"]
    ]
    assert any("residual skip, max |x|" in d and "in 10 batch(es)" in d for d in details)
    out.unlink()
    rep.unlink()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "other.npz", other=np.zeros((1, 3, 160, 160), np.float32))
    np.savez(tmp_path / "small.npz", images=np.zeros((2, 3, 96, 96), np.uint8))
    for name, message in (
        ("junk.npz", "cannot read inputs file"),
        ("other.npz", "lacks graph input(s): images"),
        ("small.npz", "samples of shape [3, 96, 96]; the model takes [3, 160, 160]"),
    ):
        assert cli.main([*args, "--calibration-data", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and message in err
        assert not out.exists() and not rep.exists()


def test_models_over_the_protobuf_limit_run_from_external_data(monkeypatch, tmp_path) -> None:
    """ONNX Runtime gets a >2 GiB model from a copy with external data (the limit is lowered here
    so a small model takes that path); the caller's model is not touched."""
    naive = onnx.load(TINY)
    before = naive.SerializeToString()
    x = {"images": np.load(MODELS / "photos-val-160.npz")["images"][:1]}
    expected = run(naive, x)["outputs"]
    from qdq_optimizer import model_io

    saved = []
    real_save = model_io.save_model

    def recording_save(model, path, **kw):
        saved.append(kw)
        return real_save(model, path, **kw)

    monkeypatch.setattr(model_io, "save_model", recording_save)
    monkeypatch.setattr(model_io, "PROTO_LIMIT", 1000)
    np.testing.assert_array_equal(run(naive, x)["outputs"], expected)
    assert saved == [{"external_data": True}]
    data = CalibrationData({"images": x["images"]})
    got = observed_ranges(naive, [["images"]], data)
    assert got[0] == pytest.approx(float(x["images"].max()) / 255)
    assert len(saved) == 2
    assert naive.SerializeToString() == before


@pytest.mark.parametrize("build", [lambda: onnx.load(TINY), lambda: relu_model("N")])
def test_model_inputs_describe_the_graph_like_onnx_runtime(build) -> None:
    from qdq_optimizer.runtime import model_inputs

    model = build()
    ours = [(i.name, i.type, list(i.shape)) for i in model_inputs(model)]
    theirs = [(i.name, i.type, list(i.shape)) for i in session(model).get_inputs()]
    assert ours == theirs
