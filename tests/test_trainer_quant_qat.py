"""trainer.quantization QAT (one process and two gloo CPU processes) and sensitivity."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_quantization")
from pytorch_quantization import nn as quant_nn  # noqa: E402

from tests.trainer_quant_toys import toy, toy_batches, toy_loader  # noqa: E402
from trainer.quantization import calibrate as cal  # noqa: E402
from trainer.quantization.insert import fuse_model, insert_quantizers  # noqa: E402
from trainer.quantization.qat import (  # noqa: E402
    QATConfig,
    lr_for_epoch,
    run_qat,
    supervision_indices,
    train_qat,
)
from trainer.quantization.scale_sharing import quantize_residuals, share_scales  # noqa: E402
from trainer.quantization.sensitivity import layer_sensitivity  # noqa: E402


def _ptq_toy():
    model = fuse_model(toy())
    insert_quantizers(model)
    quantize_residuals(model)
    share_scales(model, torch.zeros(1, 3, 32, 32))
    cal.calibrate(model, toy_batches(), 4, "max")
    return model


def _amax(model):
    return {
        n: m.amax.clone()
        for n, m in model.named_modules()
        if isinstance(m, quant_nn.TensorQuantizer)
    }


def test_seed_lr_schedule_and_supervision():
    assert [lr_for_epoch(e, 10) for e in range(10)] == [1e-6] * 3 + [1e-5] * 5 + [1e-6] * 2
    assert [lr_for_epoch(e, 20) for e in (5, 6, 15, 16)] == [1e-6, 1e-5, 1e-5, 1e-6]
    assert supervision_indices(10, 4) == [0, 4, 8]  # 8 = the layer before the head
    assert supervision_indices(10, 3) == [0, 3, 6, 8]


def test_qat_single_process_moves_weights_not_scales():
    model = _ptq_toy()
    amax0 = _amax(model)
    w0 = model.model[4].conv.weight.detach().clone()
    x = toy_batches(1, 4, seed=9)[0]
    teacher = fuse_model(toy())
    with torch.no_grad():
        err0 = (model(x) - teacher(x)).pow(2).mean()
    calls = []

    def evaluate(m):  # a real signal: closeness of the fake-quant model to the float one
        with torch.no_grad():
            err = float((m(x) - teacher(x)).pow(2).mean())
        calls.append(err)
        return {"map50": -err, "map": -err}

    saved = []
    cfg = QATConfig(epochs=3, iters=3, supervision_stride=2, progress=False, amp=True)
    res = train_qat(model, toy_loader, cfg, evaluate, lambda m, rec: saved.append(rec["epoch"]))
    assert len(res.epochs) == 3 and len(calls) == 3
    assert [r["lr"] for r in res.epochs] == [1e-6, 1e-5, 1e-6]
    assert all(r["iters"] == 3 and r["loss"] > 0 for r in res.epochs)
    assert saved and saved[0] == 0 and res.best_epoch == saved[-1]
    assert not torch.equal(w0, model.model[4].conv.weight)  # weights trained
    assert all(torch.equal(v, _amax(model)[k]) for k, v in amax0.items())  # scales frozen
    assert min(calls) <= float(err0) * 1.05  # distillation does not drift away from float


def test_qat_two_cpu_processes_gloo_ddp():
    model = _ptq_toy()
    w0 = model.model[4].conv.weight.detach().clone()
    cfg = QATConfig(epochs=1, iters=2, nproc=2, progress=False, device="cpu")
    res = run_qat(model, toy_loader, cfg)
    assert res.world_size == 2
    a, b = res.rank_checksums
    assert a == b  # DDP kept both ranks' weights identical
    assert res.epochs[0]["iters"] == 2
    assert not torch.equal(w0, model.model[4].conv.weight)  # trained weights came back


def test_sensitivity_sorted_and_restores_quantizers():
    model = _ptq_toy()
    teacher = fuse_model(toy())
    x = toy_batches(1, 2, seed=3)[0]

    def evaluate(m):
        with torch.no_grad():
            err = float((m(x) - teacher(x)).pow(2).mean())
        return {"map50": 1 - err, "map": 1 - err}

    before = {
        n
        for n, m in model.named_modules()
        if isinstance(m, quant_nn.TensorQuantizer) and not m._disabled
    }
    res = layer_sensitivity(model, evaluate)
    maps = [r["map"] for r in res["layers"]]
    assert maps == sorted(maps, reverse=True)
    assert {r["layer"] for r in res["layers"]} == {0, 1, 2, 3, 4, 6, 7}  # MaxPool has no quantizer
    assert max(maps) >= res["quantized"]["map"]  # switching a layer to float helps most there
    after = {
        n
        for n, m in model.named_modules()
        if isinstance(m, quant_nn.TensorQuantizer) and not m._disabled
    }
    assert before == after


def test_qat_without_evaluation_keeps_last_epoch():
    model = _ptq_toy()
    saved = []
    cfg = QATConfig(epochs=2, iters=1, progress=False)
    res = train_qat(model, toy_loader, cfg, None, lambda m, rec: saved.append(rec["epoch"]))
    assert saved == [0, 1] and res.best_epoch == 1 and res.best_map is None
