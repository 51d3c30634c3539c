"""Residual skip scales from calibration samples (``optimize --calibration-data``).

A skip that no quantizer reads at all (a ResNet downsample branch) has no scale to borrow, so
``residual-add`` used to leave it float (and lint reported it). With samples it gets
``max|x| / 127`` over the samples, measured with activation quantization off
(``calibration.observed_ranges``): the same covering range the ``calibrated`` scale-group policy
gives skip groups. The peaks of every unquantized Add input are measured in one ONNX Runtime pass
at the first skip that needs one, and kept for the run.
"""

from __future__ import annotations

import numpy as np

from ..calibration import CalibrationData, observed_ranges
from ..graph import QGraph, Tensor
from ..trt_patterns import is_const
from . import ActionContext

PEAKS = "unquantized_skip_peaks"  # ActionContext.run key: tensor name -> max |x| (or None)


def scale_from_samples(graph: QGraph, skip: Tensor, ctx: ActionContext) -> float | None:
    """``max|x| / 127`` of ``skip`` on the calibration samples (None without samples, or when
    the skip is all zero on them)."""
    data: CalibrationData | None = ctx.settings.get("calibration")
    if data is None or not _unquantized(graph, skip):
        return None
    peaks: dict[str, float | None] = ctx.run.setdefault(PEAKS, {})
    if skip.name not in peaks:
        names = {skip.name}
        for add in graph.nodes_of("Add"):  # every unquantized Add input: one ORT pass in all
            names.update(
                t.name for t in add.inputs if _unquantized(graph, t) and t.name not in peaks
            )
        order = sorted(names)
        found = observed_ranges(graph.to_model(), [[n] for n in order], data)
        peaks.update(zip(order, found, strict=True))
    peak = peaks.get(skip.name)
    return None if peak is None else float(np.float32(peak / 127.0))


def _unquantized(graph: QGraph, t: Tensor) -> bool:
    """A float activation no Q reads and no DQ produces (the bypassed graph still has it)."""
    return (
        bool(t.name)
        and not is_const(t)
        and not graph.quantizers_of(t)
        and not graph.is_dq(graph.producer(t))
    )
