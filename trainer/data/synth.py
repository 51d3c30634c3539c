"""A deterministic synthetic detection set (coloured shapes on textured backgrounds), COCO format.

Used for demos and tests: easy enough that a tiny model trained for minutes on a CPU reaches a
meaningful mAP, so quantization losses are measurable. Written to a temporary folder and renamed,
so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from qdq_optimizer.errors import MissingDependencyError, UsageError

SHAPES = ["circle", "rectangle", "triangle", "ring", "frame", "outline-triangle"]


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFilter
    except ModuleNotFoundError as exc:  # pragma: no cover - Pillow is in the train extra
        raise MissingDependencyError(
            "the synthetic data set needs Pillow, which is not installed: install qdqopt[train]"
        ) from exc
    return Image, ImageDraw, ImageFilter


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth colour gradient + low-frequency blobs + pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / max(w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    for _ in range(int(rng.integers(2, 6))):  # soft blobs
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.4) * max(w, h)
        amp = rng.uniform(-40, 40, 3)
        g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += g[..., None] * amp[None, None, :]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, bg: np.ndarray) -> tuple[int, int, int]:
    for _ in range(20):
        col = rng.integers(0, 256, 3)
        if np.abs(col.astype(float) - bg).sum() > 180:
            break
    return tuple(int(v) for v in col)


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection over the smaller box (keeps occlusion small so boxes stay honest)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1e-6)


def _draw_shape(draw, kind: str, box: list[float], colour, rng: np.random.Generator) -> list[float]:
    """Draw one shape filling ``box``; return its exact bounding box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    lw = max(2, int(min(x1 - x0, y1 - y0) * 0.12))
    if kind in ("circle", "ring"):
        d = min(x1 - x0, y1 - y0)
        x1, y1 = x0 + d, y0 + d
        if kind == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], outline=colour, width=lw)
    elif kind in ("rectangle", "frame"):
        if kind == "rectangle":
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=lw)
    else:
        up = rng.random() < 0.5
        apex = rng.uniform(x0, x1)
        pts = [(apex, y0), (x0, y1), (x1, y1)] if up else [(apex, y1), (x0, y0), (x1, y0)]
        if kind == "triangle":
            draw.polygon(pts, fill=colour)
        else:
            draw.polygon(pts, outline=colour, width=lw)
    return [x0, y0, x1 + 1, y1 + 1]  # PIL fills the end pixel too


def synth_dataset(
    out_dir: str | os.PathLike,
    images: int,
    size: int = 256,
    nc: int = 3,
    seed: int = 0,
    max_objects: int = 6,
) -> Path:
    """Write ``images`` JPEGs and ``annotations/instances.json`` into ``out_dir``; same seed, same set.

    Classes are the first ``nc`` of: circle, rectangle, triangle, ring, frame, outline-triangle
    (COCO category ids 1..nc). Images are ``size`` wide and 75-100% as tall (to exercise letterbox).
    """
    Image, ImageDraw, ImageFilter = _pil()
    if not 1 <= nc <= len(SHAPES):
        raise UsageError(f"synthetic set supports 1..{len(SHAPES)} classes, got {nc}")
    if images < 1 or size < 32:
        raise UsageError(f"need images >= 1 and size >= 32, got {images} and {size}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output folder exists and is not empty: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder's parent does not exist: {parent}")
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
        coco_images, annotations = [], []
        for idx in range(images):
            w = size
            h = int(size * rng.uniform(0.75, 1.0)) // 2 * 2
            bg = _background(rng, w, h)
            img = Image.fromarray(bg)
            draw = ImageDraw.Draw(img)
            boxes: list[list[float]] = []
            for _ in range(int(rng.integers(1, max_objects + 1))):
                for _try in range(10):
                    s = rng.uniform(0.12, 0.45) * min(w, h)
                    bw, bh = s * rng.uniform(0.7, 1.4), s * rng.uniform(0.7, 1.4)
                    bw, bh = min(bw, w - 2), min(bh, h - 2)
                    x0, y0 = rng.uniform(0, w - bw - 1), rng.uniform(0, h - bh - 1)
                    cand = [x0, y0, x0 + bw, y0 + bh]
                    if all(_overlap(cand, b) < 0.15 for b in boxes):
                        break
                else:
                    continue
                cls = int(rng.integers(0, nc))
                cx, cy = int((cand[0] + cand[2]) / 2), int((cand[1] + cand[3]) / 2)
                colour = _contrasting_colour(rng, bg[min(cy, h - 1), min(cx, w - 1)].astype(float))
                box = [round(v) for v in cand]
                box = _draw_shape(draw, SHAPES[cls], box, colour, rng)
                boxes.append(box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": idx + 1,
                        "category_id": cls + 1,
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "area": float((box[2] - box[0]) * (box[3] - box[1])),
                        "iscrowd": 0,
                    }
                )
            if rng.random() < 0.3:
                img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
            name = f"{idx:06d}.jpg"
            img.save(tmp / "images" / name, quality=92)
            coco_images.append({"id": idx + 1, "file_name": name, "width": w, "height": h})
        categories = [{"id": i + 1, "name": SHAPES[i]} for i in range(nc)]
        doc = {"images": coco_images, "annotations": annotations, "categories": categories}
        (tmp / "annotations" / "instances.json").write_text(json.dumps(doc))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return out
