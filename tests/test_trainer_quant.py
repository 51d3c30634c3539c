"""trainer.quantization: insertion, calibration (CPU MSE), scale sharing, export, checkpoints."""

from __future__ import annotations

import io
import logging

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_quantization")
ort = pytest.importorskip("onnxruntime")
from pytorch_quantization import nn as quant_nn  # noqa: E402
from pytorch_quantization.calib import HistogramCalibrator  # noqa: E402
from pytorch_quantization.calib import histogram as lib_hist  # noqa: E402
from torch import nn  # noqa: E402

from tests.trainer_quant_toys import toy, toy_batches  # noqa: E402
from trainer.quantization import calibrate as cal  # noqa: E402
from trainer.quantization.export import export_model  # noqa: E402
from trainer.quantization.insert import fuse_model, insert_quantizers, iter_quantizers  # noqa: E402
from trainer.quantization.quant_checkpoint import load_quantized, save_quantized  # noqa: E402
from trainer.quantization.scale_sharing import (  # noqa: E402
    q_node_owners,
    quantize_residuals,
    share_scales,
    tagged_export,
    tie_quantizers,
)


def _prepared(seed: int = 0):
    model = fuse_model(toy(seed))
    insert_quantizers(model)
    quantize_residuals(model)
    groups = share_scales(model, torch.zeros(1, 3, 32, 32))
    return model, groups


@pytest.fixture(scope="module")
def calibrated():
    model, groups = _prepared()
    cal.calibrate(model, toy_batches(), 4, "mse")
    return model, groups


def _inits(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


# ------------------------------------------------------------------------------- insertion
def test_insert_swaps_layers_keeps_weights_and_reports_dead_regex(caplog):
    model = fuse_model(toy())
    w = model.model[4].conv.weight
    with caplog.at_level(logging.WARNING, logger="qdqopt.trainer"):
        rep = insert_quantizers(model, [r"model\.6\.(.*)", r"model\.99\.(.*)"])
    assert rep.ignored == ["model.6.conv"]
    assert rep.unmatched_patterns == [r"model\.99\.(.*)"]
    assert "matches no quantizable module" in caplog.text
    assert type(model.model[6].conv) is nn.Conv2d
    assert isinstance(model.model[4].conv, quant_nn.QuantConv2d)
    assert model.model[4].conv.weight is w  # parameters are shared, not copied
    deconv = model.model[7]
    assert isinstance(deconv, quant_nn.QuantConvTranspose2d)
    assert deconv._weight_quantizer.axis == 1  # per output channel of [Cin, Cout, k, k]
    assert model.model[0].conv._input_quantizer.axis is None  # per-tensor activations
    lin = nn.Sequential(nn.Linear(4, 3))
    insert_quantizers(lin)
    assert isinstance(lin[0], quant_nn.QuantLinear)


def test_fuse_runs_first_no_bn_left():
    model, _ = _prepared()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# ------------------------------------------------------------------------------- calibration
def _histogram(seed: int) -> HistogramCalibrator:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.abs(rng.standard_t(3, size=20000)).astype(np.float32))
    c = HistogramCalibrator(8, None, False, num_bins=300)
    c.collect(x)
    c.collect(x * 1.7)  # grows the histogram past its first range
    return c


@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_mse_and_entropy_match_library_algorithms(monkeypatch, seed):
    c = _histogram(seed)
    hist = c._calib_hist.int().numpy()
    edges = c._calib_bin_edges.numpy()
    assert len(hist) > 300
    ours_mse = cal.amax_from_histogram(c, "mse")
    ours_kl = cal.amax_from_histogram(c, "entropy")
    ref_kl = float(lib_hist._compute_amax_entropy(hist.copy(), edges, 8, False, 1, 128))
    # the library's MSE search, with its hard-coded .cuda() neutralised for this CPU run
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    ref_mse = float(lib_hist._compute_amax_mse(hist, edges, 8, False))
    assert ours_mse == pytest.approx(ref_mse, rel=1e-3)
    assert ours_kl == pytest.approx(ref_kl, rel=1e-6)
    top = float(edges[-1])
    assert 0 < ours_mse < top and 0 < ours_kl < top


def test_every_method_runs_on_cpu_and_orders_sensibly():
    model, _ = _prepared()
    cal.collect_stats(model, toy_batches(), 4)
    got = {m: cal.compute_amax(model, m) for m in ("max", "percentile", "mse", "entropy")}
    names = list(got["max"])
    assert names and all(set(v) == set(names) for v in got.values())
    for n in names:
        assert got["percentile"][n] <= got["max"][n] + 1e-6
        assert 0 < got["mse"][n] <= got["max"][n] + 1e-6
        assert 0 < got["entropy"][n] <= got["max"][n] + 1e-6
    with pytest.raises(Exception, match="unknown calibration method"):
        cal.compute_amax(model, "bogus")


def test_weight_amax_is_per_channel_max(calibrated):
    model, _ = calibrated
    conv = model.model[3].conv
    expect = conv.weight.detach().abs().amax(dim=(1, 2, 3))
    assert torch.allclose(conv._weight_quantizer.amax.flatten(), expect)
    deconv = model.model[7]
    assert deconv._weight_quantizer.amax.shape == (1, 4, 1, 1)


# ------------------------------------------------------------------------------- scale sharing
def test_scale_groups_tie_one_quantizer_object(calibrated):
    model, groups = calibrated
    m = model.model
    # two convs reading the same tensor, plus the residual skip and its conv input
    assert m[3].conv._input_quantizer is m[4].conv._input_quantizer
    assert m[1]._skip_quantizer is m[1].cv1.conv._input_quantizer
    assert m[2].add._skip_quantizer is m[2].body.conv._input_quantizer
    assert any("model.1._skip_quantizer" in g for g in groups)
    # calibrating a shared quantizer gives one amax for the whole group
    assert float(m[3].conv._input_quantizer.amax) == float(m[4].conv._input_quantizer.amax)


def test_tagged_export_maps_every_q_node_to_its_quantizer():
    model = fuse_model(toy())
    insert_quantizers(model)
    proto, tags = tagged_export(model, torch.zeros(1, 3, 32, 32))
    owners = q_node_owners(proto, tags)
    n_inputs = sum(1 for _ in iter_quantizers(model, inputs_only=True))
    assert len(set(owners.values())) == n_inputs
    for node_name, path in owners.items():
        # agrees with the exporter's module-path naming, but does not depend on it
        assert node_name.endswith(path.rsplit(".", 1)[-1] + "/QuantizeLinear")


def test_union_find_merges_overlapping_groups():
    model = fuse_model(toy())
    insert_quantizers(model)
    a, b, c = (f"model.{i}.conv._input_quantizer" for i in (0, 3, 4))
    merged = tie_quantizers(model, [[a, b], [b, c]])
    assert merged == [[a, b, c]]
    assert model.get_submodule(a) is model.get_submodule(c)


def test_residual_add_skip_input_arrives_through_dq(calibrated):
    model, _ = calibrated
    proto = export_model(model, io.BytesIO(), torch.zeros(1, 3, 32, 32))
    producer = {o: n for n in proto.graph.node for o in n.output}
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == 2
    for add in adds:
        kinds = sorted(producer[i].op_type for i in add.input)
        assert kinds == ["DequantizeLinear", "Mul"]  # skip via DQ, conv branch (SiLU) not quantized


# ------------------------------------------------------------------------------- export
def test_export_qdq_format_and_matches_pytorch(calibrated):
    model, _ = calibrated
    x = toy_batches(1, 3)[0]
    proto = export_model(model, io.BytesIO(), torch.zeros(1, 3, 32, 32), dynamic_batch=True)
    inits = _inits(proto)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["outputs"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 13
    qs = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert qs
    per_axis = 0
    for q in qs:
        scale, zp = inits[q.input[1]], inits[q.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
        if scale.size > 1:
            per_axis += 1
            axis = next(a.i for a in q.attribute if a.name == "axis")
            assert axis in (0, 1)
    assert per_axis == sum(1 for n, _ in iter_quantizers(model) if n.endswith("_weight_quantizer"))
    q0 = model.model[0].conv._input_quantizer
    first = next(q for q in qs if q.input[0] == "images")
    assert float(inits[first.input[1]]) == pytest.approx(float(q0.amax) / 127, rel=1e-6)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
        flt = fuse_model(toy())(x).numpy()
    err_q = np.abs(got - ref).max()
    assert err_q < 0.05 * np.abs(ref).max()
    assert np.abs(ref - flt).max() > 0  # the fake-quant model is really quantized


# ------------------------------------------------------------------------------- checkpoints
def test_quantized_checkpoint_roundtrip_weights_only(calibrated, tmp_path):
    model, _ = calibrated
    model.model[6].conv._input_quantizer.disable()
    try:
        path = tmp_path / "ptq.pt"
        save_quantized(model, path, {"stage": "ptq"}, model_config={"toy": True})
        raw = torch.load(path, weights_only=True)
        assert raw["meta"]["stage"] == "ptq"
        loaded, _ = load_quantized(path, model_factory=lambda cfg: toy(5))
        x = toy_batches(1)[0]
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))
        assert loaded.model[3].conv._input_quantizer is loaded.model[4].conv._input_quantizer
        assert loaded.model[6].conv._input_quantizer._disabled
    finally:
        model.model[6].conv._input_quantizer.enable()


def test_bad_checkpoint_is_input_error(tmp_path):
    from qdq_optimizer.errors import InputError

    p = tmp_path / "x.pt"
    torch.save({"hello": torch.zeros(1)}, p)
    with pytest.raises(InputError, match="not a qdqopt quantized checkpoint"):
        load_quantized(p)
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="not a loadable checkpoint"):
        load_quantized(tmp_path / "junk.pt")


def test_checkpoints_saved_before_the_module_rename_still_load() -> None:
    """ptq.pt/qat.pt files record their loader by module name; the old name still resolves."""
    from trainer.checkpoint import _custom_loader
    from trainer.quantization import quant_checkpoint

    assert quant_checkpoint.LOADER == "trainer.quantization.quant_checkpoint:rebuild"
    old = _custom_loader("trainer.quantization.checkpoint:rebuild", "old.pt")
    assert old is quant_checkpoint.rebuild
