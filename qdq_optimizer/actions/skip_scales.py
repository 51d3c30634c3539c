"""Residual skip scales from calibration samples (``optimize --calibration-data``).

A skip that no quantizer reads at all (a ResNet downsample branch) has no scale to borrow, so
``residual-add`` used to leave it float (and lint reported it). With samples it gets
``max|x| / 127`` over the samples, measured with activation quantization off by the calibration
pre-pass (``settings: observed_ranges``): the same covering range the ``calibrated`` scale-group
policy gives skip groups. No model is run here.
"""

from __future__ import annotations

import numpy as np

from ..graph import QGraph, Tensor
from ..trt_patterns import is_const
from .registry import ActionContext


def scale_from_samples(graph: QGraph, skip: Tensor, ctx: ActionContext) -> float | None:
    """``max|x| / 127`` of ``skip`` on the calibration samples (None without samples, or when
    the skip is all zero on them)."""
    ranges: dict[str, float] | None = ctx.settings.get("observed_ranges")
    if not ranges or not _unquantized(graph, skip):
        return None
    peak = ranges.get(skip.name)
    return None if not peak else float(np.float32(peak / 127.0))


def _unquantized(graph: QGraph, t: Tensor) -> bool:
    """A float activation no Q reads and no DQ produces (the bypassed graph still has it)."""
    return (
        bool(t.name)
        and not is_const(t)
        and not graph.quantizers_of(t)
        and not graph.is_dq(graph.producer(t))
    )
