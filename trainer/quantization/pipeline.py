"""The ``quantize`` / ``export`` / ``sensitive`` flows as library calls (the commands are thin).

Order (the seed's, with the optimizer in the loop): load float -> fuse -> insert quantizers ->
residual skip quantizers -> scale groups from the optimizer (tie) -> calibrate (PTQ) -> save ->
QAT -> save best, with an evaluation at every step written to ``summary.json``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from qdq_optimizer.errors import InputError, UsageError
from qdq_optimizer.fileio import check_output_path

from .calibrate import METHODS, calibrate
from .insert import InsertReport, fuse_model, insert_quantizers
from .qat import QATConfig, run_qat, top_layers, write_summary
from .quant_checkpoint import is_quantized_checkpoint, rebuild, save_quantized
from .scale_sharing import quantize_residuals, share_scales
from .sensitivity import layer_sensitivity


def default_ignore_policy(model: nn.Module) -> list[str]:
    """Keep the detection head's output convs float, as the seed does (``model\\.105\\.m\\.(.*)``)."""
    layers = top_layers(model)
    if layers and isinstance(getattr(layers[-1], "m", None), nn.ModuleList):
        return [rf"model\.{len(layers) - 1}\.m\.(.*)"]
    return []


def load_any(
    path: str | os.PathLike, trust_checkpoint: bool = False, yolov7_repo: str | None = None
) -> tuple[nn.Module, bool]:
    """(model, is_quantized): a qdqopt ptq/qat checkpoint, or a float one via trainer.checkpoint."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain-types file: let the float loader decide
        obj = None
    if is_quantized_checkpoint(obj):
        return rebuild(obj), True
    from trainer.checkpoint import load_model

    model = load_model(p, trust_checkpoint=trust_checkpoint, yolov7_repo=yolov7_repo)
    if isinstance(model, tuple):
        model = model[0]
    if not isinstance(model, nn.Module):
        raise InputError(f"{p}: does not contain a model")
    return model, False


def prepare(
    model: nn.Module,
    ignore_policy: str | list[str] | None,
    img_size: int,
    rules: str | None = None,
) -> tuple[nn.Module, InsertReport, list[list[str]]]:
    """Fuse, insert quantizers, add residual skip quantizers, tie the optimizer's scale groups."""
    model = fuse_model(model).cpu().eval()
    policy = ignore_policy if ignore_policy else default_ignore_policy(model)
    report = insert_quantizers(model, policy)
    if not report.quantized:
        raise UsageError("no layer was quantized (the ignore policy excludes every layer?)")
    quantize_residuals(model)
    groups = share_scales(model, torch.zeros(1, 3, img_size, img_size), rules)
    return model, report, groups


def _evaluate(
    model: nn.Module,
    data: str,
    img_size: int,
    batch_size: int,
    device: str,
    max_images,
    progress: bool = True,
):
    from trainer.evaluate import evaluate

    res = evaluate(
        model,
        data,
        img_size=img_size,
        batch_size=batch_size,
        device=device,
        max_images=max_images,
        progress=progress,
    )
    return {"map50": float(res["map50"]), "map": float(res["map"])}


def evaluator(
    data: str,
    img_size: int,
    batch_size: int,
    device: str,
    max_images: int | None = None,
    progress: bool = True,
) -> Callable[[nn.Module], dict]:
    """A picklable ``model -> {"map50", "map"}`` (it crosses into spawned QAT workers)."""
    return functools.partial(
        _evaluate,
        data=str(data),
        img_size=img_size,
        batch_size=batch_size,
        device=device,
        max_images=max_images,
        progress=progress,
    )


def _fmt(res: dict) -> str:
    return f"mAP@0.5 {res['map50']:.4f}, mAP@0.5:0.95 {res['map']:.4f}"


def _loader(data: str, img_size: int, batch_size: int, shuffle: bool, seed: int | None = None):
    from trainer.data import create_dataloader

    return create_dataloader(data, img_size, batch_size, shuffle=shuffle, seed=seed)


@dataclass
class QuantizeOptions:
    data: str
    val: str | None = None  # evaluation set (default: data)
    ptq: str | None = None
    qat: str | None = None
    summary: str | None = None
    eval_origin: bool = False
    eval_ptq: bool = False
    ignore_policy: list[str] = field(default_factory=list)
    supervision_stride: int = 1
    iters: int = 200
    epochs: int = 10
    calib_method: str = "mse"
    calib_batches: int = 25
    device: str = "cpu"
    rules: str | None = "yolov7"
    img_size: int = 640
    batch_size: int = 10
    nproc: int = 1
    progress: bool = True
    trust_checkpoint: bool = False
    yolov7_repo: str | None = None


def _progress_iter(label: str, enabled: bool):
    from rich.console import Console
    from rich.progress import track

    def wrap(it, total):
        return track(
            it,
            description=label,
            total=total,
            disable=not enabled,
            transient=False,
            console=Console(stderr=True),
        )

    return wrap


def check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device must be cpu or cuda[:N], got {device!r}")
    return device


def _quiet(_msg: str) -> None:
    pass


def run_quantize(weights: str, opts: QuantizeOptions, log: Callable[[str], None] = print) -> dict:
    """PTQ (and QAT when ``opts.qat``); returns the summary (also written to ``opts.summary``)."""
    if opts.calib_method not in METHODS:
        raise UsageError(f"--calib-method must be one of {', '.join(METHODS)}")
    if opts.epochs < 1 or opts.iters < 1 or opts.calib_batches < 1 or opts.nproc < 1:
        raise UsageError("--epochs, --iters, --calib-batches and --nproc must be >= 1")
    device = check_device(opts.device)
    outs = [p for p in (opts.ptq, opts.qat, opts.summary) if p]
    for p in outs:
        check_output_path(p, weights)
    summary_path = opts.summary or (
        str(Path(opts.qat or opts.ptq).with_name("summary.json"))
        if (opts.qat or opts.ptq)
        else None
    )
    calib_loader = _loader(opts.data, opts.img_size, opts.batch_size, shuffle=True)  # checks data
    model, _ = load_any(weights, opts.trust_checkpoint, opts.yolov7_repo)
    if opts.val:
        from trainer.data import load_dataset

        load_dataset(opts.val, opts.img_size)  # bad evaluation set: fail before any work
    evaluate_fn = evaluator(
        opts.val or opts.data, opts.img_size, opts.batch_size, device, progress=opts.progress
    )
    summary: dict = {"weights": str(weights), "options": asdict(opts), "results": {}}
    t0 = time.time()
    # under torchrun every rank runs this; only rank 0 evaluates, logs and writes files
    main = int(os.environ.get("RANK", "0")) == 0
    if not main:
        log = _quiet
        opts = QuantizeOptions(**{**asdict(opts), "eval_origin": False, "eval_ptq": False,
                                  "ptq": None, "summary": None, "progress": False})  # fmt: skip
        summary_path = None

    if opts.eval_origin:
        summary["results"]["origin"] = evaluate_fn(fuse_model(model).to(device).eval())
        log(f"float: {_fmt(summary['results']['origin'])}")
    model, report, groups = prepare(model.cpu(), opts.ignore_policy, opts.img_size, opts.rules)
    summary["quantized_layers"] = len(report.quantized)
    summary["ignored_layers"] = report.ignored
    summary["unmatched_ignore_patterns"] = report.unmatched_patterns
    summary["scale_groups"] = groups
    log(
        f"quantized {len(report.quantized)} layers (kept float: {len(report.ignored)}), "
        f"tied {len(groups)} scale groups from the optimizer"
    )
    for p in report.unmatched_patterns:
        log(f"warning: --ignore-policy {p!r} matches no quantizable module")

    model.to(device)
    torch.manual_seed(0)
    calibrate(
        model,
        calib_loader,
        opts.calib_batches,
        opts.calib_method,
        device,
        _progress_iter(f"Calibrating ({opts.calib_method})", opts.progress),
    )
    meta = {"calib_method": opts.calib_method, "rules": opts.rules, "img_size": opts.img_size}
    if opts.ptq:
        save_quantized(model, opts.ptq, {**meta, "stage": "ptq"})
        log(f"saved PTQ model to {opts.ptq}")
    if opts.eval_ptq or (main and opts.qat is None and not opts.ptq):
        summary["results"]["ptq"] = evaluate_fn(model)
        log(f"PTQ: {_fmt(summary['results']['ptq'])}")

    if opts.qat:
        cfg = QATConfig(
            epochs=opts.epochs,
            iters=opts.iters,
            supervision_stride=opts.supervision_stride,
            device=device,
            nproc=opts.nproc,
            progress=opts.progress,
        )

        def save(m: nn.Module, record: dict) -> None:
            save_quantized(m, opts.qat, {**meta, "stage": "qat", **record})

        loader_fn = functools.partial(_loader, opts.data, opts.img_size, opts.batch_size, True)
        result = run_qat(model, loader_fn, cfg, evaluate_fn, save)
        summary["results"]["qat_epochs"] = result.epochs
        summary["results"]["qat_best"] = {"epoch": result.best_epoch, "map": result.best_map}
        for rec in result.epochs:
            scores = f", {_fmt(rec)}" if "map" in rec else ""
            log(f"QAT epoch {rec['epoch']}: lr {rec['lr']:g}, loss {rec['loss']:.4g}{scores}")
        log(f"saved best QAT model (epoch {result.best_epoch}) to {opts.qat}")
    summary["seconds"] = round(time.time() - t0, 1)
    if summary_path:
        write_summary(summary_path, summary)
    return summary


def run_sensitivity(
    weights: str,
    data: str,
    img_size: int = 640,
    batch_size: int = 10,
    calib_method: str = "mse",
    calib_batches: int = 25,
    num_image: int | None = None,
    device: str = "cpu",
    rules: str | None = "yolov7",
    progress: bool = True,
    on_layer: Callable[[int, int], None] | None = None,
    trust_checkpoint: bool = False,
    yolov7_repo: str | None = None,
    layers: set[int] | None = None,
    seed: int = 0,
) -> dict:
    """Quantize every layer (no ignore policy), calibrate, then disable one layer at a time.

    ``seed`` fixes the calibration batches (the shuffled loader) and torch's RNG, so two runs with
    the same seed give the same numbers.
    """
    device = check_device(device)
    loader = _loader(data, img_size, batch_size, shuffle=True, seed=seed)
    model, quantized = load_any(weights, trust_checkpoint, yolov7_repo)
    torch.manual_seed(seed)
    if not quantized:
        model = fuse_model(model).cpu().eval()
        insert_quantizers(model, None)
        quantize_residuals(model)
        share_scales(model, torch.zeros(1, 3, img_size, img_size), rules)
        model.to(device)
        calibrate(model, loader, calib_batches, calib_method, device,
                  _progress_iter("Calibrating", progress))  # fmt: skip
    model.to(device).eval()
    evaluate_fn = evaluator(data, img_size, batch_size, device, num_image, progress=progress)
    return layer_sensitivity(model, evaluate_fn, on_layer=on_layer, only=layers)


def parse_layers(spec: str | None) -> set[int] | None:
    """ "0-3,7" -> {0, 1, 2, 3, 7}; None stays None (all layers)."""
    if not spec:
        return None
    out: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UsageError(f"--layers: expected indices like '0-3,7', got {spec!r}") from None
    return out


def _optimize_and_lint(proto, rules: str):
    """The optimizer's library API: rewrite the placement by ``rules``, then lint the result."""
    try:
        from qdq_optimizer import api
    except ImportError:
        raise UsageError(
            "--optimize needs qdq_optimizer.api (optimize/lint), not available"
        ) from None
    optimized, _report = api.optimize(proto, rules)
    problems = api.lint(optimized, rules)
    if problems:
        from qdq_optimizer.errors import CheckFailed

        first = problems[0]
        raise CheckFailed(
            f"optimized export still has {len(problems)} lint problem(s), first: {first}"
        )
    return optimized


def run_export(
    weights: str,
    save: str,
    size: int = 640,
    dynamic: bool = False,
    optimize: bool = False,
    rules: str | None = None,
    trust_checkpoint: bool = False,
    yolov7_repo: str | None = None,
) -> dict:
    """Export ``weights`` (quantized or float) to ``save``; with ``optimize`` also optimize + lint."""
    import io

    import onnx

    from qdq_optimizer.fileio import write_bytes_atomic

    from .export import export_model

    out = check_output_path(save, weights)
    if size < 32 or size % 32:
        raise UsageError(f"--size must be a multiple of 32 (>= 32), got {size}")
    if optimize and not rules:
        raise UsageError("--optimize needs --rules NAME")
    model, quantized = load_any(weights, trust_checkpoint, yolov7_repo)
    if not quantized:
        model = fuse_model(model)
    proto = export_model(model, io.BytesIO(), torch.zeros(1, 3, size, size), 13, dynamic)
    if optimize:
        proto = _optimize_and_lint(proto, rules)
    write_bytes_atomic(out, proto.SerializeToString())
    onnx.checker.check_model(proto)
    return {
        "kind": "quantized" if quantized else "float",
        "nodes": len(proto.graph.node),
        "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in proto.graph.node),
    }
