"""Non-maximum suppression in plain torch (torchvision's compiled ops do not load beside CPU torch).

Greedy per-class NMS, the same result as ``torchvision.ops.batched_nms``: classes are separated by
offsetting boxes, then a box is kept unless a higher-scoring kept box overlaps it above ``iou``.
"""

from __future__ import annotations

import numpy as np
import torch


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: ``[N, 4] x [M, 4] -> [N, M]``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, max_det: int | None = None):
    """Indexes of kept boxes by decreasing score (greedy, exact); stops after ``max_det`` kept.

    Greedy NMS keeps boxes in score order, so stopping early gives the same first ``max_det``.
    """
    order = scores.argsort(descending=True)
    limit = len(order) if max_det is None else max_det
    keep: list[int] = []
    if len(order) <= 4096:  # one IoU matrix, then a cheap loop over numpy rows
        over = (box_iou(boxes[order], boxes[order]) > iou).cpu().numpy()
        suppressed = np.zeros(len(order), dtype=bool)
        for i in range(len(order)):
            if suppressed[i]:
                continue
            keep.append(i)
            if len(keep) >= limit:
                break
            suppressed |= over[i]
        return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]
    kept = []  # many boxes: memory linear in n
    while order.numel() and len(kept) < limit:
        i = order[0]
        kept.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i].view(1, 4), boxes[rest])[0] <= iou]
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.stack(kept)


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    iou: float,
    max_det: int | None = None,
) -> torch.Tensor:
    """Per-class NMS by shifting each class's boxes to a disjoint region."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + offset, scores, iou, max_det)


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.001,
    iou_thres: float = 0.65,
    multi_label: bool = True,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """Decoded head output ``[B, N, 5 + nc]`` -> per image ``[n, 6]`` (x1, y1, x2, y2, score, class).

    Scores are objectness x class probability; with ``multi_label`` one box may be kept for several
    classes (as the yolov7 evaluation does).
    """
    out = []
    for x in prediction:
        x = x[x[:, 4] > conf_thres]
        if not len(x):
            out.append(torch.zeros((0, 6), device=prediction.device))
            continue
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if len(det) > max_nms:
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        keep = batched_nms(det[:, :4], det[:, 4], det[:, 5], iou_thres, max_det)
        out.append(det[keep])
    return out
