"""Scales from data: the ``calibrated`` scale-group policy with ``optimize --calibration-data``.

A naive export calibrates each quantizer on its own tensor. When TensorRT needs several of them to
share one scale (a Concat, a C2f Split, a residual skip), the data-free ``max`` policy keeps every
value representable but coarsens the narrower tensors. With calibration samples the group's scale
is chosen the way the seed calibrates a shared quantizer instead: run the model with its activation
Q/DQ pairs bypassed (quantization off, as pytorch-quantization calibrates), histogram |x| of every
tensor the group quantizes (2048 bins over one range per group), and take the amax that minimises
the quantization error of all those values together (the seed's MSE search, from bin 128).

Two passes over the samples (range, then histogram) keep memory at one histogram per group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import InputError

BINS = 2048
START_BIN = 128
INT8_MAX = 127.0


@dataclass
class CalibrationData:
    """Samples keyed by graph input name (first axis: samples; uint8 images are scaled by 1/255)."""

    arrays: dict[str, np.ndarray]
    source: str = "<arrays>"
    runs: int = field(default=0, init=False)  # ONNX Runtime batches of the last collection

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationData:
        from .verify import load_inputs

        return cls(load_inputs(path), os.fspath(path))

    def check(self, model: onnx.ModelProto) -> int:
        """Raise InputError unless the samples fit the model's inputs; the number of runs."""
        from .verify import feed_batches, session

        try:
            return len(feed_batches(session(model), self.arrays, dynamic_batch=1))
        except InputError as exc:
            raise InputError(f"calibration data {self.source}: {exc}") from None


def bypass_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every Q -> DQ pair on an activation is skipped (weights keep
    their Q/DQ): what the model computes with activation quantization switched off."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    constants = {t.name for t in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output
    }
    q_input = {
        n.output[0]: n.input[0]
        for n in g.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in constants
    }
    alias = {
        n.output[0]: q_input[n.input[0]]
        for n in g.node
        if n.op_type == "DequantizeLinear" and n.input[0] in q_input
    }
    if not alias:
        return out
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    for o in g.output:
        if o.name in alias:  # a graph output behind a Q/DQ pair: keep its name with an Identity
            g.node.append(onnx.helper.make_node("Identity", [alias[o.name]], [o.name]))
    read = {
        i
        for n in g.node
        if n.op_type != "DequantizeLinear" or n.output[0] not in alias
        for i in n.input
    } | {o.name for o in g.output}
    keep = [
        n
        for n in g.node
        if not (n.op_type == "DequantizeLinear" and n.output[0] in alias)
        and not (
            n.op_type == "QuantizeLinear" and n.output[0] in q_input and n.output[0] not in read
        )
    ]
    del g.node[:]
    g.node.extend(keep)
    return out


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model


def group_histograms(
    model: onnx.ModelProto, groups: Sequence[Sequence[str]], data: CalibrationData
) -> list[tuple[np.ndarray, float]]:
    """Per group: the |x| histogram (``BINS`` bins over [0, range]) of all its tensors' values on
    the calibration samples, and that range (the largest |x| seen)."""
    from .verify import feed_batches, session

    graph_inputs = {i.name for i in model.graph.input}
    names = sorted({n for g in groups for n in g})
    fetch = [n for n in names if n not in graph_inputs]
    sess = session(_with_outputs(bypass_activation_qdq(model), fetch))
    batches = feed_batches(sess, data.arrays, dynamic_batch=1)
    data.runs = len(batches)

    def values(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = dict(zip(fetch, sess.run(fetch, feed), strict=True)) if fetch else {}
        got.update({n: feed[n] for n in names if n in graph_inputs})
        out = {}
        for n, v in got.items():
            a = np.abs(np.asarray(v, dtype=np.float32)).ravel()
            out[n] = a[np.isfinite(a)]  # an overflowing activation must not poison the range
        return out

    peak = dict.fromkeys(names, 0.0)
    for feed in batches:
        for n, v in values(feed).items():
            if v.size:
                peak[n] = max(peak[n], float(v.max()))
    ranges = [max((peak[n] for n in g), default=0.0) for g in groups]
    hists = [np.zeros(BINS, np.float64) for _ in groups]
    where = {n: i for i, g in enumerate(groups) for n in g}
    for feed in batches:
        for n, v in values(feed).items():
            i = where[n]
            if ranges[i] > 0:
                hists[i] += np.histogram(v, bins=BINS, range=(0.0, ranges[i]))[0]
    return list(zip(hists, ranges, strict=True))


def amax_mse(hist: np.ndarray, top: float, start_bin: int = START_BIN) -> float:
    """The bin centre that minimises the histogram-weighted int8 fake-quant MSE (the seed's
    calibrator semantics; the first minimum wins)."""
    if top <= 0 or not hist.any():
        return top
    width = top / hist.size
    centers = (np.arange(hist.size) + 0.5) * width
    cands = centers[start_bin:] if hist.size > start_bin else centers[-1:]
    nz = hist > 0
    x, w = centers[nz][None, :], hist[nz][None, :]
    errs = []
    for chunk in np.array_split(cands, max(1, cands.size // 256)):
        scale = INT8_MAX / chunk[:, None]
        q = np.clip(np.round(x * scale), -INT8_MAX, INT8_MAX) / scale
        errs.append(((q - x) ** 2 * w).sum(axis=1))
    err = np.concatenate(errs)
    return float(cands[int(np.argmin(err))])


def group_scales(
    model: onnx.ModelProto, groups: Sequence[Sequence[str]], data: CalibrationData
) -> list[float | None]:
    """One int8 scale per group of tensor names (None where no sample reached the group)."""
    if not groups:
        return []
    out: list[float | None] = []
    for hist, top in group_histograms(model, groups, data):
        amax = amax_mse(hist, top)
        out.append(float(np.float32(amax / INT8_MAX)) if amax > 0 else None)
    return out
