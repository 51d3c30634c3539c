"""COCO mAP of a detector (PyTorch module, checkpoint, or ONNX model run in ONNX Runtime).

Every model is reduced to one function ``images [B,3,S,S] -> outputs [B,N,5+nc]`` (the tensor the
ONNX export names ``outputs``), so PyTorch and ONNX numbers come from the same NMS, the same box
mapping back through the letterbox and the same pycocotools COCOeval. Batches, NMS and box mapping
are numpy, so an ONNX model is evaluated without importing torch; torch is imported only for a
module or a ``.pt`` checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qdq_optimizer.errors import InputError

from .data import DetectionDataset, iter_batches, load_dataset
from .nms import non_max_suppression

if TYPE_CHECKING:
    from torch import nn

# images [B, 3, S, S] float32 -> decoded head output [B, N, 5 + nc] float32
Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model: nn.Module, device: str = "cpu") -> Predictor:
    """Wrap a module; tuple outputs (upstream style ``(pred, raw)``) are reduced to ``pred``."""
    import torch

    model.eval().to(device)

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        y = model(torch.from_numpy(x).to(device))
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.float().cpu().numpy()

    return run


def onnx_predictor(path: str | os.PathLike) -> tuple[Predictor, int | None]:
    """ONNX Runtime session on the CPU; returns the predictor and the model's fixed size, if any."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise InputError(f"{path}: ONNX Runtime cannot load the model ({exc})") from exc
    inputs = {i.name: i for i in sess.get_inputs()}
    in_name = "images" if "images" in inputs else next(iter(inputs))
    outs = [o.name for o in sess.get_outputs()]
    out_name = "outputs" if "outputs" in outs else outs[0]
    shape = inputs[in_name].shape
    fixed_batch = shape[0] if isinstance(shape[0], int) else None
    fixed_size = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None

    def run(x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float32)
        if fixed_batch is not None and fixed_batch != len(arr):
            chunks = [arr[i : i + fixed_batch] for i in range(0, len(arr), fixed_batch)]
            if len(chunks[-1]) != fixed_batch:  # pad the last partial batch
                pad = np.zeros((fixed_batch - len(chunks[-1]), *arr.shape[1:]), np.float32)
                chunks[-1] = np.concatenate([chunks[-1], pad])
            y = np.concatenate([sess.run([out_name], {in_name: c})[0] for c in chunks])[: len(arr)]
        else:
            y = sess.run([out_name], {in_name: arr})[0]
        return np.asarray(y, dtype=np.float32)

    return run, fixed_size


def evaluate(
    model_or_onnx_path: nn.Module | str | os.PathLike,
    data_path: str | os.PathLike | DetectionDataset,
    img_size: int = 640,
    conf: float = 0.001,
    iou: float = 0.65,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
    max_images: int | None = None,
    trust_checkpoint: bool = False,
    yolov7_repo: str | os.PathLike | None = None,
) -> dict:
    """mAP@0.5 and mAP@0.5:0.95 (COCOeval) of a module, a ``.pt`` checkpoint or a ``.onnx`` file.

    Returns ``{"map50", "map", "images", "detections", "seconds"}``.
    """
    started = time.perf_counter()
    predictor, img_size = _predictor(
        model_or_onnx_path, img_size, device, trust_checkpoint, yolov7_repo
    )
    if isinstance(data_path, DetectionDataset):
        ds = data_path
        if ds.img_size != img_size or ds.augment:  # evaluate un-augmented, at the model's size
            ds = DetectionDataset(
                ds.records, img_size, ds.category_ids, ds.names, False, ds.source, ds._coco
            )
    else:
        ds = load_dataset(data_path, img_size)
    if max_images is not None:
        ds = DetectionDataset(
            ds.records[:max_images], img_size, ds.category_ids, ds.names, False, ds.source
        )
    batches = iter_batches(ds, batch_size)
    total = -(-len(ds) // batch_size)
    results: list[dict] = []
    nc_checked = False
    for imgs, metas in _track(batches, progress, "evaluating", total):
        pred = predictor(imgs)
        if pred.ndim != 3 or pred.shape[-1] < 6:
            raise InputError(f"model output has shape {tuple(pred.shape)}, expected [B, N, 5 + nc]")
        if not nc_checked:
            cat_ids = _category_ids(ds, pred.shape[-1] - 5)
            nc_checked = True
        dets = non_max_suppression(pred, conf, iou)
        for det, meta in zip(dets, metas, strict=True):
            results.extend(_to_coco(det, meta, cat_ids))
    stats = coco_map(ds, results, [r.image_id for r in ds.records])
    return {
        **stats,
        "images": len(ds),
        "detections": len(results),
        "seconds": round(time.perf_counter() - started, 2),
    }


def coco_map(ds: DetectionDataset, results: list[dict], image_ids: list[int]) -> dict:
    """Run COCOeval on detection dicts; ``{"map50": .., "map": ..}`` (0 when nothing detected)."""
    if not results:
        return {"map50": 0.0, "map": 0.0}
    from pycocotools.cocoeval import COCOeval

    gt = ds.coco()
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50": max(0.0, float(ev.stats[1])), "map": max(0.0, float(ev.stats[0]))}


def _predictor(model, img_size: int, device: str, trust: bool, repo) -> tuple[Predictor, int]:
    if not isinstance(model, (str, os.PathLike)):  # a torch module
        return torch_predictor(model, device), img_size
    p = Path(model)
    if not p.is_file():
        raise InputError(f"model not found: {p}")
    if p.suffix.lower() == ".onnx":
        run, fixed = onnx_predictor(p)
        return run, fixed or img_size
    from .checkpoint import load_model

    return torch_predictor(
        load_model(p, trust_checkpoint=trust, yolov7_repo=repo), device
    ), img_size


def _category_ids(ds: DetectionDataset, nc: int) -> list[int]:
    """Model class index -> data set category id (txt-list sets number classes 0..nc-1)."""
    if nc == ds.nc:
        return list(ds.category_ids)
    if ds.category_ids == list(range(ds.nc)) and nc > ds.nc:
        return list(range(nc))
    raise InputError(f"the model predicts {nc} classes but {ds.source} has {ds.nc} categories")


def _to_coco(det: np.ndarray, meta: dict, cat_ids: list[int]) -> list[dict]:
    """Undo the letterbox, clip to the image, convert to COCO ``[x, y, w, h]`` result dicts."""
    if not len(det):
        return []
    lb = meta["letterbox"]
    h, w = lb.orig_hw
    box = det[:, :4].copy()
    box[:, [0, 2]] = ((box[:, [0, 2]] - np.float32(lb.pad[0])) / np.float32(lb.ratio)).clip(0, w)
    box[:, [1, 3]] = ((box[:, [1, 3]] - np.float32(lb.pad[1])) / np.float32(lb.ratio)).clip(0, h)
    out = []
    for b, score, cls in zip(box.tolist(), det[:, 4].tolist(), det[:, 5].tolist(), strict=True):
        out.append(
            {
                "image_id": meta["image_id"],
                "category_id": cat_ids[int(cls)],
                "bbox": [
                    round(b[0], 3),
                    round(b[1], 3),
                    round(b[2] - b[0], 3),
                    round(b[3] - b[1], 3),
                ],
                "score": round(score, 5),
            }
        )
    return out


def _track(iterable, enabled: bool, label: str, total: int):
    """A rich progress bar on stderr (transient) when it is a terminal, or the bare iterable."""
    import sys

    if not enabled or not sys.stderr.isatty():
        yield from iterable
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(
        iterable,
        description=label,
        console=Console(stderr=True),
        transient=True,
        total=total,
    )


def stored_img_size(model: str | os.PathLike) -> int | None:
    """The input size a model was made for: a fixed ONNX input, or a checkpoint's ``img_size``
    (a quantized checkpoint's ``meta.img_size``); None when it records none."""
    p = Path(model)
    if not p.is_file():
        return None
    if p.suffix.lower() == ".onnx":
        import onnx

        try:
            dims = (
                onnx.load(str(p), load_external_data=False)
                .graph.input[0]
                .type.tensor_type.shape.dim
            )
        except Exception:  # noqa: BLE001 - unreadable models are reported by evaluate()
            return None
        return dims[2].dim_value if len(dims) == 4 and dims[2].dim_value > 0 else None
    import torch

    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable files are reported by evaluate()
        return None
    if not isinstance(obj, dict):
        return None
    size = obj.get("img_size")
    meta = obj.get("meta")
    if size is None and isinstance(meta, dict):  # qdqopt quantize's PTQ/QAT checkpoints
        size = meta.get("img_size")
    return int(size) if isinstance(size, int) and size > 0 else None
