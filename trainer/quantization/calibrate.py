"""PTQ calibration: collect activation histograms, then pick every amax, on CPU or GPU.

pytorch-quantization 2.1.3 computes the MSE amax with ``.cuda()`` hard-coded, so the amax search
is done here from the calibrator's histogram on whatever device the histogram lives on
(vectorised; the library's loop is one kernel launch per candidate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from pytorch_quantization import calib
from pytorch_quantization import nn as quant_nn
from scipy.stats import entropy as scipy_entropy
from torch import nn

from qdq_optimizer.errors import UsageError

from .insert import iter_quantizers

METHODS = ("mse", "percentile", "entropy", "max")


def _hist(calibrator: calib.HistogramCalibrator) -> tuple[torch.Tensor, torch.Tensor] | None:
    hist, edges = calibrator._calib_hist, calibrator._calib_bin_edges
    if hist is None or edges is None:
        return None
    hist = torch.as_tensor(hist).double()
    edges = torch.as_tensor(edges, device=hist.device).double()
    n = min(hist.numel(), edges.numel() - 1)  # numpy/torch growth can leave one extra edge
    return hist[:n], edges[: n + 1]


def amax_mse(
    hist: torch.Tensor,
    edges: torch.Tensor,
    num_bits: int = 8,
    start_bin: int = 128,
    stride: int = 1,
) -> float:
    """The bin centre that minimises the histogram-weighted fake-quant MSE (library semantics)."""
    centers = (edges[1:] + edges[:-1]) / 2
    cands = torch.arange(start_bin, centers.numel(), stride, device=centers.device)
    if cands.numel() == 0:
        return float(centers[-1])
    nz = hist > 0  # empty bins add nothing to any candidate's error: skip them (same argmin)
    x, w = centers[nz].unsqueeze(0), hist[nz].unsqueeze(0)
    bound = 2.0 ** (num_bits - 1) - 1
    errs = []
    for chunk in cands.split(256):  # bounded memory for grown histograms
        scale = bound / centers[chunk].unsqueeze(1)
        q = torch.clamp(torch.round(x * scale), -bound, bound) / scale
        errs.append(((q - x) ** 2 * w).sum(dim=1))
    err = torch.cat(errs)
    # first minimum, like np.argmin over the library's list
    best = int(torch.nonzero(err == err.min())[0])
    return float(centers[cands[best]])


def amax_percentile(hist: torch.Tensor, edges: torch.Tensor, percentile: float = 99.99) -> float:
    """The upper edge that keeps ``percentile`` % of the samples."""
    if not 0 < percentile <= 100:
        raise UsageError(f"percentile must be in (0, 100], got {percentile}")
    cdf = torch.cumsum(hist, 0) / hist.sum()
    idx = int(
        torch.searchsorted(cdf, torch.tensor(percentile / 100, dtype=cdf.dtype, device=cdf.device))
    )
    return float(edges[min(idx + 1, edges.numel() - 1)])


def amax_max(hist: torch.Tensor, edges: torch.Tensor) -> float:
    """Upper edge of the last non-empty bin (within one bin width of the true max |x|)."""
    nz = torch.nonzero(hist > 0)
    return float(edges[int(nz[-1]) + 1]) if nz.numel() else float(edges[-1])


def amax_entropy(
    hist: torch.Tensor,
    edges: torch.Tensor,
    num_bits: int = 8,
    stride: int = 1,
    start_bin: int = 128,
) -> float:
    """KL-divergence calibration (TensorRT's legacy entropy method).

    The library's search with its per-bin Python loops replaced by ``np.bincount`` (same
    candidates, same divergences, same last-minimum choice; a test compares the two).
    """
    bins = hist.cpu().numpy().astype(np.float64).copy()
    e = edges.cpu().numpy()
    if len(bins) > 1:
        bins[0] = bins[1]  # the library ignores the zero spike of ReLU-like inputs
    nq = 1 << (num_bits - 1)
    start = min(start_bin, len(bins))
    divergences, arguments = [], []
    for i in range(start, len(bins) + 1, stride):
        dig = np.digitize(np.arange(i), np.linspace(0, i, num=nq + 1)) - 1
        valid = bins[:i] != 0
        counts = np.bincount(dig[valid], weights=bins[:i][valid], minlength=nq)
        members = np.bincount(dig[valid], minlength=nq)
        per = np.divide(counts, members, out=np.zeros_like(counts), where=members > 0)
        new_density = np.where(valid, per[dig], 0.0)
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        divergences.append(scipy_entropy(reference, new_density))
        arguments.append(i)
    div = np.asarray(divergences)
    last_argmin = len(div) - 1 - int(np.argmin(div[::-1]))
    return float(e[last_argmin * stride + start])


def amax_from_histogram(
    calibrator: calib.HistogramCalibrator, method: str, percentile: float = 99.99
) -> float | None:
    """amax of one histogram calibrator by ``method``; None when it saw no data."""
    got = _hist(calibrator)
    if got is None:
        return None
    hist, edges = got
    if float(hist.sum()) == 0:
        return float(edges[-1]) or 1.0
    if method == "mse":
        return amax_mse(hist, edges, calibrator._num_bits)
    if method == "percentile":
        return amax_percentile(hist, edges, percentile)
    if method == "max":
        return amax_max(hist, edges)
    if method == "entropy":
        return amax_entropy(hist, edges, calibrator._num_bits)
    raise UsageError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")


def _set_amax(q: quant_nn.TensorQuantizer, value: torch.Tensor) -> None:
    value = value.detach().float()
    if hasattr(q, "_amax"):
        value = value.to(q._amax.device)
    q.register_buffer("_amax", value)


def weight_amax(module: nn.Module) -> torch.Tensor:
    """Per-channel max |W| in the keep-dims shape the quantizer's axis expects."""
    q = module._weight_quantizer
    w = module.weight.detach().abs()
    if q.axis is None:
        return w.amax()
    axes = [q.axis] if isinstance(q.axis, int) else list(q.axis)
    reduce = [d for d in range(w.dim()) if d not in axes]
    return w.amax(dim=reduce, keepdim=True).clamp_min(1e-8)


def calibrate_weights(model: nn.Module) -> None:
    """Weights: per-channel max, computed directly (deterministic, no forward pass needed)."""
    for m in model.modules():
        if hasattr(m, "_weight_quantizer") and hasattr(m, "weight"):
            _set_amax(m._weight_quantizer, weight_amax(m))


def images_of(batch) -> torch.Tensor:
    """The image tensor of a loader batch: a tensor, (images, ...) or {"images"/"img": ...}."""
    if isinstance(batch, dict):
        batch = batch.get("images", batch.get("img"))
    elif isinstance(batch, (list, tuple)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise UsageError(
            "calibration loader must yield image tensors (or tuples starting with one)"
        )
    return batch


def prepare_images(batch, device: torch.device | str) -> torch.Tensor:
    """uint8 0..255 images (yolov7 loaders) become float 0..1, float images are kept."""
    imgs = images_of(batch).to(device, non_blocking=True)
    return imgs.float() / 255.0 if imgs.dtype == torch.uint8 else imgs.float()


def collect_stats(
    model: nn.Module,
    loader: Iterable,
    num_batches: int,
    device: torch.device | str = "cpu",
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> int:
    """Run ``num_batches`` batches with quantization bypassed and histograms collected.

    A quantizer shared by several layers (scale group) collects all their inputs into one
    histogram, so its amax covers every tensor that TensorRT will quantize with that scale.
    """
    inputs = [q for _, q in iter_quantizers(model, inputs_only=True)]
    for q in inputs:
        q.disable_quant()
        q.enable_calib()
    seen = 0
    model.eval()
    try:
        with torch.no_grad():
            it: Iterable = loader if progress is None else progress(loader, num_batches)
            for i, batch in enumerate(it):
                if i >= num_batches:
                    break
                model(prepare_images(batch, device))
                seen += 1
    finally:
        for q in inputs:
            q.enable_quant()
            q.disable_calib()
    if seen == 0:
        raise UsageError("calibration saw no batch: the data set is empty")
    return seen


def compute_amax(
    model: nn.Module, method: str = "mse", percentile: float = 99.99
) -> dict[str, float]:
    """Set every input quantizer's amax from its histogram, and every weight amax; return inputs'."""
    if method not in METHODS:
        raise UsageError(
            f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})"
        )
    out: dict[str, float] = {}
    for name, q in iter_quantizers(model, inputs_only=True):
        cal = getattr(q, "_calibrator", None)
        if isinstance(cal, calib.HistogramCalibrator):
            amax = amax_from_histogram(cal, method, percentile)
        elif isinstance(cal, calib.MaxCalibrator):
            a = cal.compute_amax()
            amax = None if a is None else float(a.max())
        else:
            amax = None
        if amax is None:  # never reached during calibration (dead branch): keep it float
            q.disable()
            continue
        # the amax lives where the activations are: the histogram's device (GPU runs)
        hist = getattr(cal, "_calib_hist", None)
        device = hist.device if isinstance(hist, torch.Tensor) else "cpu"
        _set_amax(q, torch.tensor(max(amax, 1e-8), device=device))
        out[name] = amax
    calibrate_weights(model)
    return out


def calibrate(
    model: nn.Module,
    loader: Iterable,
    num_batches: int = 25,
    method: str = "mse",
    device: torch.device | str = "cpu",
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> dict[str, float]:
    """PTQ in one call: collect histograms then compute amax (the seed's 25 batches by default)."""
    collect_stats(model, loader, num_batches, device, progress)
    return compute_amax(model, method)
