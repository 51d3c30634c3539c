"""Detection data sets (COCO JSON or yolov7 txt-list layout), letterbox, and the data loader.

Both layouts become one in-memory form: per image a path, an id, its size, pixel ``xyxy`` boxes and
model class indexes, plus a COCO ground-truth dict so evaluation always goes through pycocotools.
Model class ``k`` maps to the ``k``-th smallest COCO category id (for COCO 2017: the usual
80-to-91 mapping). Loading and letterboxing are numpy only (``iter_batches``), so evaluating an ONNX
model needs no torch; items, ``collate`` and ``create_dataloader`` build torch tensors for training.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdq_optimizer.errors import InputError, MissingDependencyError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
PAD_VALUE = 114


def _pil_image():
    try:
        from PIL import Image
    except ModuleNotFoundError as exc:  # pragma: no cover - Pillow is in the train extra
        raise MissingDependencyError(
            "reading images needs Pillow, which is not installed: install qdqopt[train]"
        ) from exc
    return Image


@dataclass
class Record:
    path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # [n, 4] xyxy pixels
    classes: np.ndarray  # [n] model class indexes


@dataclass
class Letterbox:
    """How an image was fitted into the square input: ``orig = (letterboxed - pad) / ratio``."""

    ratio: float
    pad: tuple[float, float]
    orig_hw: tuple[int, int]


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to ``size`` x ``size`` with grey (114)."""
    Image = _pil_image()
    h, w = img.shape[:2]
    r = size / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    if (nw, nh) != (w, h):
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    out[py : py + nh, px : px + nw] = img
    return out, Letterbox(r, (float(px), float(py)), (h, w))


@dataclass
class DetectionDataset:
    """Images + labels; items are ``(CHW float image, targets [n, 6], meta)`` torch tensors.

    ``targets`` rows are ``(batch index placeholder, class, cx, cy, w, h)`` normalised to the
    letterboxed square, the layout the loss expects; ``meta`` has ``image_id`` and ``letterbox``.
    A map-style set for torch's DataLoader; ``sample`` is the same item in numpy. ``rng`` drives
    the augmentation (``create_dataloader`` seeds it; unseeded when None).
    """

    records: list[Record]
    img_size: int
    category_ids: list[int]
    names: list[str]
    augment: bool = False
    source: str = ""
    _coco: object | None = field(default=None, repr=False)
    rng: np.random.Generator | None = field(default=None, repr=False, compare=False)

    @property
    def nc(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, i: int) -> np.ndarray:
        Image = _pil_image()
        rec = self.records[i]
        try:
            with Image.open(rec.path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read image {rec.path}: {exc}") from exc

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Image ``i`` as (CHW float32 in [0, 1], letterboxed xyxy pixel boxes, meta), numpy only."""
        rec = self.records[i]
        img = self.load_image(i)
        boxes = rec.boxes.astype(np.float32).copy()
        if self.augment:
            img, boxes = _augment(img, boxes, self.rng or np.random.default_rng())
        lb_img, lb = letterbox(img, self.img_size)
        boxes = boxes * lb.ratio + np.array([*lb.pad, *lb.pad], dtype=np.float32)
        x = np.ascontiguousarray(lb_img.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
        return x, boxes, {"image_id": rec.image_id, "letterbox": lb}

    def __getitem__(self, i: int):
        import torch

        x, boxes, meta = self.sample(i)
        n = len(boxes)
        t = torch.zeros((n, 6))
        if n:
            b = torch.from_numpy(boxes)
            t[:, 1] = torch.from_numpy(self.records[i].classes.astype(np.float32))
            t[:, 2] = (b[:, 0] + b[:, 2]) / 2 / self.img_size
            t[:, 3] = (b[:, 1] + b[:, 3]) / 2 / self.img_size
            t[:, 4] = (b[:, 2] - b[:, 0]) / self.img_size
            t[:, 5] = (b[:, 3] - b[:, 1]) / self.img_size
        return torch.from_numpy(x), t, meta

    def coco_gt(self) -> dict:
        """Ground truth as a COCO dict (for pycocotools), whatever the source layout was."""
        images = [
            {"id": r.image_id, "file_name": r.path.name, "width": r.width, "height": r.height}
            for r in self.records
        ]
        anns = []
        for r in self.records:
            for box, cls in zip(r.boxes, r.classes, strict=True):
                w, h = float(box[2] - box[0]), float(box[3] - box[1])
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": r.image_id,
                        "category_id": self.category_ids[int(cls)],
                        "bbox": [float(box[0]), float(box[1]), w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        cats = [{"id": c, "name": n} for c, n in zip(self.category_ids, self.names, strict=True)]
        return {"images": images, "annotations": anns, "categories": cats}

    def coco(self):
        """A pycocotools COCO object of the ground truth (built once, quietly)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            gt = COCO()
            gt.dataset = self.coco_gt()
            with contextlib.redirect_stdout(io.StringIO()):
                gt.createIndex()
            self._coco = gt
        return self._coco


def _augment(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    """Flips and colour jitter: cheap, label-preserving augmentations for the training set."""
    h, w = img.shape[:2]
    if rng.random() < 0.5:
        img = img[:, ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        img = img[::-1]
        boxes = boxes.copy()
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    f = img.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)
    f = f[..., rng.permutation(3)] if rng.random() < 0.3 else f
    return np.clip(f, 0, 255).astype(np.uint8), boxes


def collate(batch):
    """Stack images; concatenate targets, writing each row's image index into column 0."""
    import torch

    imgs, targets, metas = zip(*batch, strict=True)
    ts = []
    for i, t in enumerate(targets):
        t = t.clone()
        t[:, 0] = i
        ts.append(t)
    return torch.stack(imgs), torch.cat(ts, 0), list(metas)


# ----------------------------------------------------------------------------- loading


def load_dataset(
    path: str | os.PathLike, img_size: int = 640, augment: bool = False
) -> DetectionDataset:
    """Open a COCO-format set (folder with ``annotations/*.json``, or the JSON itself) or a
    yolov7 txt list (``.txt`` of image paths, ``labels/`` beside ``images/``)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"data set not found: {p}")
    if p.is_file() and p.suffix == ".json":
        return _load_coco(p, _coco_image_dirs(p), img_size, augment)
    if p.is_file() and p.suffix == ".txt":
        return _load_txt_list(p, img_size, augment)
    if p.is_dir():
        ann = _find_annotations(p)
        if ann is not None:
            return _load_coco(ann, _coco_image_dirs(ann, p), img_size, augment)
        lists = sorted(p.glob("*.txt"))
        if len(lists) == 1:
            return _load_txt_list(lists[0], img_size, augment)
        if (p / "images").is_dir() and (p / "labels").is_dir():
            files = sorted(
                f for f in (p / "images").rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
            )
            return _from_yolo_files(files, p, img_size, augment)
        raise InputError(
            f"{p}: no annotations/*.json, no single .txt image list and no images/+labels/ folders"
        )
    raise InputError(f"{p}: expected a folder, a COCO .json or a yolov7 .txt image list")


def _find_annotations(root: Path) -> Path | None:
    ann_dir = root / "annotations"
    if not ann_dir.is_dir():
        return None
    if (ann_dir / "instances.json").is_file():
        return ann_dir / "instances.json"
    found = sorted(ann_dir.glob("instances*.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(f"{ann_dir}: no instances*.json annotation file")
    names = ", ".join(f.name for f in found)
    raise InputError(f"{ann_dir}: several annotation files ({names}); pass one .json instead")


def _coco_image_dirs(ann: Path, root: Path | None = None) -> list[Path]:
    root = root or ann.parent.parent
    split = ann.stem.removeprefix("instances").lstrip("_")
    dirs = [root / "images", root]
    if split:
        dirs = [root / "images" / split, root / split] + dirs
    return dirs


def _load_coco(ann: Path, image_dirs: list[Path], img_size: int, augment: bool):
    try:
        doc = json.loads(ann.read_text())
        images = doc["images"]
        annotations = doc.get("annotations", [])
        categories = doc["categories"]
        cat_ids = sorted(int(c["id"]) for c in categories)
        names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
        by_image: dict[int, list[dict]] = {}
        for a in annotations:
            by_image.setdefault(int(a["image_id"]), []).append(a)
        image_ids = {int(im["id"]) for im in images}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{ann}: not a COCO instances file ({type(exc).__name__}: {exc})") from exc
    if not cat_ids:
        raise InputError(f"{ann}: no categories")
    orphans = set(by_image) - image_ids
    if orphans:
        raise InputError(
            f"{ann}: {len(orphans)} annotation image_id(s) not among the images, e.g. {min(orphans)}"
        )
    cat_index = {c: k for k, c in enumerate(cat_ids)}
    image_dir = _pick_image_dir(images, image_dirs, ann)
    records = []
    for im in images:
        path = image_dir / im["file_name"]
        if not path.is_file():
            raise InputError(
                f"{ann}: image {im['file_name']} (id {im['id']}) not found in {image_dir}"
            )
        boxes, classes = [], []
        for a in by_image.get(int(im["id"]), []):
            if a.get("iscrowd", 0):
                continue
            if int(a["category_id"]) not in cat_index:
                raise InputError(
                    f"{ann}: annotation {a.get('id')} has unknown category {a['category_id']}"
                )
            x, y, w, h = (float(v) for v in a["bbox"])
            if w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            classes.append(cat_index[int(a["category_id"])])
        records.append(
            Record(
                path,
                int(im["id"]),
                int(im["width"]),
                int(im["height"]),
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(classes, dtype=np.int64),
            )
        )
    ds = DetectionDataset(
        records, img_size, cat_ids, [names_by_id[c] for c in cat_ids], augment, str(ann)
    )
    # crowd regions still matter for COCOeval: keep the original document as ground truth
    if any(a.get("iscrowd", 0) for a in annotations):
        from pycocotools.coco import COCO

        gt = COCO()
        gt.dataset = doc
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        ds._coco = gt
    return ds


def _pick_image_dir(images: list[dict], dirs: list[Path], ann: Path) -> Path:
    if not images:
        raise InputError(f"{ann}: no images listed")
    first = images[0]["file_name"]
    for d in dirs:
        if (d / first).is_file():
            return d
    tried = ", ".join(str(d) for d in dirs)
    raise InputError(f"{ann}: image {first} not found (looked in {tried})")


def _load_txt_list(txt: Path, img_size: int, augment: bool) -> DetectionDataset:
    files = []
    for line in txt.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = Path(line)
        files.append(f if f.is_absolute() else (txt.parent / f))
    if not files:
        raise InputError(f"{txt}: the image list is empty")
    return _from_yolo_files(files, txt, img_size, augment)


def _label_path(img: Path) -> Path:
    parts = list(img.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return img.with_suffix(".txt")


def _from_yolo_files(files: list[Path], source: Path, img_size: int, augment: bool):
    Image = _pil_image()
    records = []
    max_cls = -1
    for idx, f in enumerate(files):
        if not f.is_file():
            raise InputError(f"{source}: image not found: {f}")
        try:
            with Image.open(f) as im:
                w, h = im.size
        except OSError as exc:
            raise InputError(f"cannot read image {f}: {exc}") from exc
        lp = _label_path(f)
        rows = np.zeros((0, 5), dtype=np.float32)
        if lp.is_file():
            try:
                rows = np.loadtxt(lp, dtype=np.float32, ndmin=2).reshape(-1, 5)
            except ValueError as exc:
                raise InputError(f"{lp}: expected rows of 'cls cx cy w h' ({exc})") from exc
            if len(rows) and ((rows[:, 1:] < -0.01).any() or (rows[:, 1:] > 1.01).any()):
                raise InputError(f"{lp}: box coordinates must be normalised to 0..1")
        cls = rows[:, 0].astype(np.int64)
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        max_cls = max(max_cls, int(cls.max()) if len(cls) else -1)
        records.append(Record(f, idx + 1, w, h, boxes.astype(np.float32), cls))
    nc = max_cls + 1 if max_cls >= 0 else 1
    cat_ids = list(range(nc))
    return DetectionDataset(
        records, img_size, cat_ids, [str(c) for c in cat_ids], augment, str(source)
    )


def iter_batches(ds: DetectionDataset, batch_size: int) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """In-order batches ``(images [B, 3, S, S] float32, metas)`` in numpy (evaluation, no torch)."""
    for start in range(0, len(ds), batch_size):
        items = [ds.sample(i) for i in range(start, min(start + batch_size, len(ds)))]
        yield np.stack([x for x, _, _ in items]), [m for _, _, m in items]


def _seed_worker_rng(worker_id: int) -> None:
    """DataLoader workers: each draws its augmentations from its own seeded generator."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(info.seed)  # torch derives it from the loader's seed


def create_dataloader(
    path: str | os.PathLike | DetectionDataset,
    img_size: int,
    batch_size: int,
    shuffle: bool = False,
    workers: int = 0,
    augment: bool = False,
    seed: int | None = None,
):
    """A torch DataLoader over :func:`load_dataset` (or a loaded set); ``.dataset`` is the set.

    With ``seed`` the shuffle order and the augmentations are the same on every run (the
    generator is consumed as the loader iterates, so epochs still differ from each other).
    """
    from torch import Generator
    from torch.utils.data import DataLoader

    ds = path if isinstance(path, DetectionDataset) else load_dataset(path, img_size, augment)
    generator = None
    if seed is not None:
        generator = Generator().manual_seed(seed)
        ds.rng = np.random.default_rng(seed)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        drop_last=False,
        persistent_workers=workers > 0,
        generator=generator,
        worker_init_fn=_seed_worker_rng if seed is not None and workers > 0 else None,
    )
    return loader
