"""Quantization error of a scale, read off a histogram of |x| (no model is run here).

The calibration pre-pass (``calibration.measure_histograms``) records the histograms; rules that
choose between scales (a producer's skip scale against ``max|x| / 127``) compare them with this
pure function, so they stay graph rewrites.
"""

from __future__ import annotations

import numpy as np


def quantization_error(counts: np.ndarray, amax: float, scale: float) -> float:
    """Mean squared error of symmetric int8 quantization (round half to even, saturate at 127
    steps) of values distributed as ``counts`` over ``[0, amax]``, each bin at its centre."""
    total = int(counts.sum())
    if total == 0 or scale <= 0:
        return 0.0
    edges = np.linspace(0.0, amax, len(counts) + 1)
    centre = (edges[:-1] + edges[1:]) / 2
    s = np.float32(scale)
    err = np.clip(np.rint(centre / s), 0, 127) * s - centre
    return float(np.dot(counts, err.astype(np.float64) ** 2) / total)
