"""The trainer's CUDA paths: calibration histograms and amax searches on the GPU (against the CPU
and against pytorch-quantization's own GPU MSE search), QAT with AMP, and ``quantize`` / ``eval`` /
``export`` with ``--device cuda``. Skipped without a CUDA device (CI has none); run by hand on a GPU
machine: ``pytest tests/test_trainer_cuda.py``. NCCL DDP needs two GPUs and is not covered here."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_quantization")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from pytorch_quantization import nn as quant_nn  # noqa: E402
from pytorch_quantization.calib import histogram as lib_hist  # noqa: E402

import cli  # noqa: E402
from tests.trainer_quant_toys import toy, toy_batches, toy_loader  # noqa: E402
from trainer.data import synth_dataset  # noqa: E402
from trainer.quantization import calibrate as cal  # noqa: E402
from trainer.quantization.insert import fuse_model, insert_quantizers  # noqa: E402
from trainer.quantization.qat import QATConfig, train_qat  # noqa: E402
from trainer.quantization.scale_sharing import quantize_residuals, share_scales  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "yolov7-tiny-synth.pt"
SIZE = 64


def _prepared(device: str):
    model = fuse_model(toy())
    insert_quantizers(model)
    quantize_residuals(model)
    share_scales(model, torch.zeros(1, 3, 32, 32))
    return model.to(device)


def _amax(model) -> dict[str, torch.Tensor]:
    return {
        n: m.amax.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, quant_nn.TensorQuantizer) and m.amax is not None
    }


@pytest.mark.parametrize("method", ["max", "percentile", "mse", "entropy"])
def test_gpu_calibration_agrees_with_cpu(method) -> None:
    got = {}
    for device in ("cpu", "cuda"):
        model = _prepared(device)
        got[device] = cal.calibrate(model, toy_batches(), 4, method, device)
        if device == "cuda":
            amax = _amax(model)
            assert amax and all(v.is_cuda for v in amax.values())
            with torch.no_grad():  # the calibrated fake-quant model runs on the GPU
                assert model(toy_batches(1)[0].cuda()).is_cuda
    assert got["cpu"].keys() == got["cuda"].keys() and got["cpu"]
    tol = 1e-5 if method == "max" else 0.02  # GPU histc may move a count across a bin edge
    for name, v in got["cpu"].items():
        assert got["cuda"][name] == pytest.approx(v, rel=tol), name


def test_our_mse_search_matches_the_librarys_gpu_search() -> None:
    model = _prepared("cuda")
    cal.collect_stats(model, toy_batches(), 4, "cuda")
    checked = 0
    for _, q in cal.iter_quantizers(model, inputs_only=True):
        c = q._calibrator
        if c is None or c._calib_hist is None:
            continue
        hist = c._calib_hist.int().cpu().numpy()
        edges = c._calib_bin_edges.cpu().numpy()
        ref = float(lib_hist._compute_amax_mse(hist, edges, 8, False))  # calls .cuda() itself
        assert cal.amax_from_histogram(c, "mse") == pytest.approx(ref, rel=1e-3)
        checked += 1
    assert checked >= 3


def test_amp_qat_on_gpu_trains_weights_and_keeps_scales() -> None:
    model = _prepared("cpu")
    cal.calibrate(model, toy_batches(), 4, "max")
    amax0 = {k: v.cpu() for k, v in _amax(model).items()}
    w0 = model.model[4].conv.weight.detach().clone()
    cfg = QATConfig(epochs=2, iters=3, supervision_stride=2, progress=False, device="cuda")
    res = train_qat(model, toy_loader, cfg, None, None)  # amp=None: on for CUDA
    assert len(res.epochs) == 2
    assert all(r["iters"] == 3 and 0 < r["loss"] < float("inf") for r in res.epochs)
    assert next(model.parameters()).is_cuda
    assert not torch.equal(w0, model.model[4].conv.weight.detach().cpu())
    assert all(torch.equal(v, _amax(model)[k].cpu()) for k, v in amax0.items())


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_cli")
    return root, synth_dataset(root / "synth", 6, size=SIZE, nc=3, seed=0)


def _maps(summary: dict, key: str) -> float:
    return float(summary["results"][key]["map"])


def test_quantize_export_eval_with_device_cuda(synth, capsys) -> None:
    root, data = synth
    common = ["--data", str(data), "--img-size", str(SIZE), "--batch-size", "3",
              "--calib-batches", "2", "--no-progress", "--eval-ptq"]  # fmt: skip
    runs = {}
    for device in ("cpu", "cuda"):
        out = root / device
        out.mkdir()
        args = ["quantize", str(FIXTURE), *common, "--device", device, "--ptq", str(out / "ptq.pt")]
        if device == "cuda":
            args += ["--qat", str(out / "qat.pt"), "--epochs", "1", "--iters", "2"]
        assert cli.main(args) == 0, capsys.readouterr().err
        runs[device] = json.loads((out / "summary.json").read_text())
    # the same calibration on either device gives (nearly) the same PTQ model
    assert _maps(runs["cuda"], "ptq") == pytest.approx(_maps(runs["cpu"], "ptq"), abs=0.05)
    assert runs["cuda"]["results"]["qat_epochs"]
    qat, onnx_out = root / "cuda" / "qat.pt", root / "cuda" / "qat.onnx"
    assert cli.main(["export", str(qat), "--save", str(onnx_out), "--size", str(SIZE),
                     "--optimize", "--rules", "yolov7-tiny"]) == 0  # fmt: skip
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_out)).graph.node)
    assert cli.main(["lint", str(onnx_out), "--rules", "yolov7-tiny"]) == 0
    capsys.readouterr()
    args = ["eval", str(qat), "--data", str(data), "--img-size", str(SIZE), "--json"]
    assert cli.main([*args, "--device", "cuda"]) == 0
    on_gpu = json.loads(capsys.readouterr().out)
    assert cli.main([*args, "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert on_gpu["map"] == pytest.approx(on_cpu["map"], abs=0.05)
