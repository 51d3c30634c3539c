"""Scales from data (``optimize --calibration-data``): sample feeding, the activation bypass, the
histograms, the MSE amax (checked against the trainer's independent torch search), the CLI."""

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
    BINS,
    CalibrationData,
    amax_mse,
    bypass_activation_qdq,
    group_histograms,
)
from qdq_optimizer.errors import InputError
from qdq_optimizer.verify import feed_batches, run, session, sqnr

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
TINY = MODELS / "yolov7-tiny-naive.onnx"


def relu_model(batch: int | str = 1) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 4, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


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
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


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


# ----------------------------------------------------------------------------- histograms, amax
def test_group_histograms_count_every_value_over_the_group_range() -> None:
    naive = onnx.load(TINY)
    bypassed = bypass_activation_qdq(naive)
    acts = [n.input[0] for n in naive.graph.node if n.op_type == "QuantizeLinear"]
    acts = [a for a in acts if a != "images" and not a.endswith("weight")][:3]
    data = CalibrationData({"images": np.load(MODELS / "photos-calib-160.npz")["images"][:3]})
    (hist, top), (hist1, top1) = group_histograms(naive, [acts[:2], acts[2:3]], data)
    assert hist.shape == (BINS,) and data.runs == 3
    m = onnx.ModelProto()
    m.CopyFrom(bypassed)
    for a in acts:
        m.graph.output.append(helper.make_empty_tensor_value_info(a))
    sess = session(m)
    vals = {a: [] for a in acts}
    for f in feed_batches(sess, data.arrays):
        for a, v in zip(acts, sess.run(acts, f), strict=True):
            vals[a].append(np.abs(v).ravel())
    first = np.concatenate([np.concatenate(vals[a]) for a in acts[:2]])
    assert hist.sum() == first.size and top == pytest.approx(float(first.max()), rel=1e-6)
    assert hist1.sum() == sum(v.size for v in vals[acts[2]])
    assert top1 == pytest.approx(float(np.concatenate(vals[acts[2]]).max()), rel=1e-6)


def test_amax_mse_matches_the_trainers_torch_search() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_quantization")
    from trainer.quantization.calibrate import amax_mse as torch_amax_mse

    rng = np.random.default_rng(0)
    for dist in (rng.normal(size=50_000), rng.laplace(size=50_000), rng.random(50_000)):
        v = np.abs(dist)
        top = float(v.max())
        hist = np.histogram(v, bins=BINS, range=(0, top))[0].astype(np.float64)
        edges = torch.linspace(0, top, BINS + 1, dtype=torch.float64)
        expected = torch_amax_mse(torch.from_numpy(hist), edges)
        assert amax_mse(hist, top) == pytest.approx(expected, abs=top / BINS * 1e-3)


def test_amax_mse_clips_rare_outliers_and_keeps_a_uniform_range() -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([np.abs(rng.normal(size=1_000_000)), [60.0, 70.0]])
    hist = np.histogram(v, bins=BINS, range=(0, 70.0))[0].astype(np.float64)
    assert amax_mse(hist, 70.0) < 30.0  # two outliers cost less clipped than 1e6 coarse steps
    u = rng.random(100_000)
    hist = np.histogram(u, bins=BINS, range=(0, float(u.max())))[0].astype(np.float64)
    assert amax_mse(hist, float(u.max())) > 0.95 * float(u.max())
    assert amax_mse(np.zeros(BINS), 0.0) == 0.0


# ----------------------------------------------------------------------------- API and CLI
def test_api_takes_arrays_and_reports_calibrated_groups() -> None:
    data = {"images": np.load(MODELS / "photos-calib-160.npz")["images"][:2]}
    _, rep = optimize(TINY, "yolov7-tiny", calibration_data=data)
    groups = next(r for r in rep.results if r.rule_id == "scale-groups")
    assert groups.changes and all(
        "calibrated: MSE over 2 batch(es)" in c.detail for c in groups.changes
    )
    with pytest.raises(InputError, match="not found"):
        optimize(TINY, "yolov7-tiny", calibration_data=MODELS / "missing.npz")


def test_cli_calibration_data(tmp_path, capsys) -> None:
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    args = ["optimize", str(TINY), str(out), "--rules", "yolov7-tiny", "--report", str(rep)]
    calib = str(MODELS / "photos-calib-160.npz")
    assert cli.main([*args, "--calibration-data", calib]) == 0
    details = [
        c["detail"]
        for r in json.loads(rep.read_text())["results"]
        if r["rule_id"] == "scale-groups"
        for c in r["changes"]
    ]
    assert details and all("(calibrated: MSE over 10 batch(es))" in d for d in details)
    out.unlink()
    rep.unlink()
    capsys.readouterr()
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
