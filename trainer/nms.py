"""Non-maximum suppression in numpy (one implementation for the PyTorch and the ONNX paths).

Greedy per-class NMS, the same result as ``torchvision.ops.batched_nms``: classes are separated by
offsetting boxes, then a box is kept unless a higher-scoring kept box overlaps it above ``iou``.
Inputs may be numpy arrays or CPU torch tensors (anything ``np.asarray`` takes); results are numpy,
so evaluating an ONNX model never imports torch.
"""

from __future__ import annotations

import numpy as np


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _descending(scores: np.ndarray) -> np.ndarray:
    """Indexes by decreasing score; equal scores keep their input order."""
    return np.argsort(-scores, kind="stable")


def xywh2xyxy(x) -> np.ndarray:
    x = _f32(x)
    y = x.copy()
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: ``[N, 4] x [M, 4] -> [N, M]``."""
    a, b = _f32(a), _f32(b)
    area_a = (a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0)
    area_b = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(min=0).prod(2)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clip(min=np.float32(1e-9))


def nms(boxes, scores, iou: float, max_det: int | None = None) -> np.ndarray:
    """Indexes of kept boxes by decreasing score (greedy, exact); stops after ``max_det`` kept.

    Greedy NMS keeps boxes in score order, so stopping early gives the same first ``max_det``.
    """
    boxes, scores = _f32(boxes), _f32(scores)
    order = _descending(scores)
    limit = len(order) if max_det is None else max_det
    keep: list[int] = []
    if len(order) <= 4096:  # one IoU matrix, then a cheap loop over its rows
        over = box_iou(boxes[order], boxes[order]) > iou
        suppressed = np.zeros(len(order), dtype=bool)
        for i in range(len(order)):
            if suppressed[i]:
                continue
            keep.append(i)
            if len(keep) >= limit:
                break
            suppressed |= over[i]
        return order[np.asarray(keep, dtype=np.int64)]
    kept: list[int] = []  # many boxes: memory linear in n
    while order.size and len(kept) < limit:
        i = order[0]
        kept.append(int(i))
        rest = order[1:]
        order = rest[box_iou(boxes[i].reshape(1, 4), boxes[rest])[0] <= iou]
    return np.asarray(kept, dtype=np.int64)


def batched_nms(boxes, scores, classes, iou: float, max_det: int | None = None) -> np.ndarray:
    """Per-class NMS by shifting each class's boxes to a disjoint region."""
    boxes = _f32(boxes)
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    offset = _f32(classes)[:, None] * (boxes.max() + 1)
    return nms(boxes + offset, scores, iou, max_det)


def non_max_suppression(
    prediction,
    conf_thres: float = 0.001,
    iou_thres: float = 0.65,
    multi_label: bool = True,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[np.ndarray]:
    """Decoded head output ``[B, N, 5 + nc]`` -> per image ``[n, 6]`` (x1, y1, x2, y2, score, class).

    Scores are objectness x class probability; with ``multi_label`` one box may be kept for several
    classes (as the yolov7 evaluation does).
    """
    out = []
    for x in _f32(prediction):
        x = x[x[:, 4] > conf_thres]
        if not len(x):
            out.append(np.zeros((0, 6), dtype=np.float32))
            continue
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = np.nonzero(scores > conf_thres)
            det = np.concatenate((box[i], scores[i, j, None], j[:, None].astype(np.float32)), 1)
        else:
            j = scores.argmax(1)
            conf = scores[np.arange(len(scores)), j][:, None]
            det = np.concatenate((box, conf, j[:, None].astype(np.float32)), 1)
            det = det[conf[:, 0] > conf_thres]
        if len(det) > max_nms:
            det = det[_descending(det[:, 4])[:max_nms]]
        keep = batched_nms(det[:, :4], det[:, 4], det[:, 5], iou_thres, max_det)
        out.append(det[keep])
    return out
