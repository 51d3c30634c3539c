"""Detection data: COCO / yolov7 txt-list loading, letterbox, loader, synthetic shapes set."""

from .dataset import (
    DetectionDataset,
    Letterbox,
    Record,
    collate,
    create_dataloader,
    iter_batches,
    letterbox,
    load_dataset,
)
from .synth import SHAPES, synth_dataset

__all__ = [
    "SHAPES",
    "DetectionDataset",
    "Letterbox",
    "Record",
    "collate",
    "create_dataloader",
    "iter_batches",
    "letterbox",
    "load_dataset",
    "synth_dataset",
]
