"""A compact YOLO detection loss: CIoU box loss, objectness BCE (IoU target), class BCE.

Anchor matching as in YOLOv5/v7's simple assigner: a target is assigned to every anchor whose
width/height ratio to it is below ``anchor_t``, in its own grid cell and the two nearest neighbour
cells (the decoded centre offset ``2*sigmoid - 0.5`` spans -0.5..1.5 cells).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def bbox_ciou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows of xywh boxes (``[n, 4]`` each)."""
    b1x1, b1x2 = b1[:, 0] - b1[:, 2] / 2, b1[:, 0] + b1[:, 2] / 2
    b1y1, b1y2 = b1[:, 1] - b1[:, 3] / 2, b1[:, 1] + b1[:, 3] / 2
    b2x1, b2x2 = b2[:, 0] - b2[:, 2] / 2, b2[:, 0] + b2[:, 2] / 2
    b2y1, b2y2 = b2[:, 1] - b2[:, 3] / 2, b2[:, 1] + b2[:, 3] / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)
    ).clamp(0)
    w1, h1, w2, h2 = b1[:, 2], b1[:, 3] + eps, b2[:, 2], b2[:, 3] + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = (b2[:, 0] - b1[:, 0]) ** 2 + (b2[:, 1] - b1[:, 1]) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class YoloLoss(nn.Module):
    """Loss for the raw head maps of a built-in detector (training-mode forward)."""

    def __init__(
        self,
        model: nn.Module,
        box: float = 0.05,
        obj: float = 1.0,
        cls: float = 0.5,
        anchor_t: float = 4.0,
        img_size: int = 640,
    ) -> None:
        super().__init__()
        det = model.model[-1]
        self.na, self.nc, self.nl = det.na, det.nc, det.nl
        self.anchors = det.anchors  # grid units, [nl, na, 2]
        self.balance = [4.0, 1.0, 0.4] if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
        scale = 3 / self.nl
        self.w_box = box * scale
        self.w_cls = cls * self.nc / 80 * scale
        self.w_obj = obj * (img_size / 640) ** 2 * scale
        self.anchor_t = anchor_t
        self.bce = nn.BCEWithLogitsLoss()

    def forward(
        self, preds: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``preds``: per level ``[B, na, ny, nx, 5 + nc]``; ``targets``: ``[n, 6]`` (img, cls, xywh
        normalised). Returns the total (times batch size, as upstream) and (box, obj, cls) parts."""
        dev = preds[0].device
        lbox = torch.zeros(1, device=dev)
        lobj = torch.zeros(1, device=dev)
        lcls = torch.zeros(1, device=dev)
        for i, p in enumerate(preds):
            b, a, gj, gi, tbox, tcls, anch = self._assign(p, targets, i)
            tobj = torch.zeros(p.shape[:4], device=dev, dtype=p.dtype)
            if len(b):
                ps = p[b, a, gj, gi]
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anch
                ciou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox)
                lbox = lbox + (1.0 - ciou).mean()
                tobj[b, a, gj, gi] = ciou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:
                    t = torch.zeros_like(ps[:, 5:])
                    t[torch.arange(len(tcls), device=dev), tcls] = 1.0
                    lcls = lcls + self.bce(ps[:, 5:], t)
            lobj = lobj + self.bce(p[..., 4], tobj) * self.balance[i]
        bs = preds[0].shape[0]
        parts = torch.cat((lbox * self.w_box, lobj * self.w_obj, lcls * self.w_cls))
        return parts.sum() * bs, parts.detach()

    def _assign(self, p: torch.Tensor, targets: torch.Tensor, i: int):
        ny, nx = p.shape[2], p.shape[3]
        anchors = self.anchors[i].to(p.device)
        nt = len(targets)
        empty = torch.zeros(0, dtype=torch.long, device=p.device)
        if nt == 0:
            z = torch.zeros((0, 4), device=p.device)
            return empty, empty, empty, empty, z, empty, torch.zeros((0, 2), device=p.device)
        gain = torch.tensor([1, 1, nx, ny, nx, ny], device=p.device, dtype=targets.dtype)
        t = targets * gain  # to grid units
        # every (anchor, target) pair with a good shape ratio
        ratio = t[None, :, 4:6] / anchors[:, None, :]
        ok = torch.max(ratio, 1 / ratio).max(2)[0] < self.anchor_t  # [na, nt]
        a_idx, t_idx = ok.nonzero(as_tuple=True)
        t = t[t_idx]
        gxy = t[:, 2:4]
        gxi = torch.tensor([nx, ny], device=p.device) - gxy
        g = 0.5
        j, k = ((gxy % 1 < g) & (gxy > 1)).T
        l_, m = ((gxi % 1 < g) & (gxi > 1)).T
        offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=p.device) * g
        sel = torch.stack((torch.ones_like(j), j, k, l_, m))  # [5, n]
        t5 = t.repeat((5, 1, 1))[sel]
        a5 = a_idx.repeat((5, 1))[sel]
        off = (torch.zeros_like(gxy)[None] + offsets[:, None])[sel]
        b = t5[:, 0].long()
        tcls = t5[:, 1].long()
        gxy = t5[:, 2:4]
        gwh = t5[:, 4:6]
        gij = (gxy - off).long()
        gi = gij[:, 0].clamp(0, nx - 1)
        gj = gij[:, 1].clamp(0, ny - 1)
        tbox = torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1)
        return b, a5, gj, gi, tbox, tcls, anchors[a5]
