"""Float baseline training of a built-in detector (AdamW, warm-up + cosine LR, EMA weights).

Small on purpose: it exists so the quantization results are measured on a model that actually
detects something (the synthetic shapes set trains to a useful mAP in minutes on a CPU).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qdq_optimizer.errors import UsageError
from qdq_optimizer.fileio import check_output_path

from .checkpoint import load_model, save_checkpoint
from .data import create_dataloader, load_dataset
from .evaluate import evaluate
from .loss import YoloLoss
from .models import build_model


class ModelEMA:
    """Exponential moving average of weights; its copy is what gets evaluated and saved."""

    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 500.0) -> None:
        self.ema = copy.deepcopy(model).eval()
        self.updates = 0
        self.decay = lambda n: decay * (1 - math.exp(-n / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "weight" and not isinstance(m, nn.BatchNorm2d):
                decay.append(p)
            else:
                no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train(
    data: str | os.PathLike,
    out: str | os.PathLike,
    model_name: str = "yolov7-tiny",
    width: float = 0.25,
    img_size: int = 160,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    val_data: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    workers: int = 0,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train on ``data`` and save the best (by val mAP@0.5:0.95, else the last) EMA model to ``out``.

    Returns a summary: per-epoch losses and metrics, the best epoch, and the output path.
    """
    out_p = check_output_path(out)
    if epochs < 1 or batch_size < 1 or img_size % 32:
        raise UsageError("need epochs >= 1, batch size >= 1 and an image size divisible by 32")
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    train_ds = load_dataset(data, img_size, augment=True)
    val_ds = load_dataset(val_data, img_size) if val_data is not None else None
    if val_ds is not None and val_ds.nc != train_ds.nc:
        raise UsageError(f"train set has {train_ds.nc} classes, val set {val_ds.nc}")
    if weights is not None:
        model = load_model(weights)
        if model.cfg["nc"] != train_ds.nc:
            raise UsageError(
                f"{weights} predicts {model.cfg['nc']} classes, the data {train_ds.nc}"
            )
        if model.is_fused:
            raise UsageError(f"{weights} is fused (deploy form) and cannot be trained further")
    else:
        model = build_model(model_name, train_ds.nc, width)
    model.names = list(train_ds.names)
    model.to(device).train()
    # seeded shuffle and augmentation (per worker from the loader's seed): --seed repeats a run
    loader = create_dataloader(
        train_ds, img_size, batch_size, shuffle=True, workers=workers, seed=seed
    )
    criterion = YoloLoss(model, img_size=img_size)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))
    total = epochs * len(loader)
    warmup = min(max(len(loader), 100), total // 3)

    def lr_at(it: int) -> float:
        if it < warmup:
            return lr * (0.1 + 0.9 * it / warmup)
        t = (it - warmup) / max(1, total - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    ema = ModelEMA(model)
    history: list[dict] = []
    best: dict | None = None
    it = 0
    started = time.perf_counter()
    bar = _Bar(progress, total)
    try:
        for epoch in range(epochs):
            model.train()
            sums = torch.zeros(3)
            for imgs, targets, _ in loader:
                for g in opt.param_groups:
                    g["lr"] = lr_at(it)
                preds = model(imgs.to(device))
                loss, parts = criterion(preds, targets.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                ema.update(model)
                sums += parts.cpu()
                it += 1
                bar.step(f"epoch {epoch + 1}/{epochs} loss {float(parts.sum()):.4f}")
            rec = {"epoch": epoch + 1, "loss": [round(float(v), 5) for v in sums / len(loader)]}
            if val_ds is not None:
                rec.update(evaluate(ema.ema, val_ds, img_size, batch_size=32, progress=False))
            history.append(rec)
            log(_describe(rec))
            is_best = val_ds is None or best is None or rec["map"] >= best["map"]
            if is_best:
                best = rec
                extra = {
                    "epoch": epoch + 1,
                    "img_size": img_size,
                    "metrics": {k: rec[k] for k in ("map50", "map") if k in rec},
                }
                save_checkpoint(out_p, ema.ema, extra)
    finally:
        bar.close()
    return {
        "out": str(Path(out_p)),
        "best": best,
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _describe(rec: dict) -> str:
    box, obj, cls = rec["loss"]
    text = f"epoch {rec['epoch']}: loss box {box:.4f} obj {obj:.4f} cls {cls:.4f}"
    if "map" in rec:
        text += f"  val mAP@0.5 {rec['map50']:.4f}  mAP@0.5:0.95 {rec['map']:.4f}"
    return text


class _Bar:
    """A rich progress bar over all training iterations (no-op when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("training", total=total)

    def step(self, description: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=description)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
