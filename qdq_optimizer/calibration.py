"""Activation ranges from samples, for ``optimize --calibration-data`` (scale policy ``calibrated``).

TensorRT fuses a residual Add into its conv only when the skip arrives in INT8, so the rules
quantize skips that a naive export left float, borrowing the scale of another quantizer on that
tensor (a conv input's, calibrated to clip rare large values) or of its concat group. A clipped
skip value is not averaged away like a clipped conv input: it passes unchanged into the block's
output and every later block adds to it. With samples, a scale group that holds a residual skip
gets a scale that covers the largest |x| seen on them, measured by running the graph under
ONNX Runtime with its activation Q/DQ pairs bypassed (quantization off, weights still quantized:
how pytorch-quantization calibrates).

A pre-pass: ``measure_ranges`` runs once on the input model, before any rule, and the rules get the
ranges as data (``settings: observed_ranges``), so rule actions stay graph rewrites that never run
a model. With activation quantization off, the rules' Q/DQ moves do not change these values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import InputError


@dataclass
class CalibrationData:
    """Samples keyed by graph input name (first axis: samples; uint8 images are scaled by 1/255)."""

    arrays: dict[str, np.ndarray]
    source: str = "<arrays>"
    runs: int = field(default=0, init=False)  # ONNX Runtime batches of the last measurement

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationData:
        from .runtime import load_inputs

        return cls(load_inputs(path), os.fspath(path))

    def check(self, model: onnx.ModelProto) -> int:
        """Raise InputError unless the samples fit the model's inputs; the number of runs."""
        from .runtime import feed_batches, model_inputs

        try:  # from the graph's inputs: no ONNX Runtime session (a big model's weights) needed
            return len(feed_batches(model_inputs(model), self.arrays, dynamic_batch=1))
        except InputError as exc:
            raise InputError(f"calibration data {self.source}: {exc}") from None


def bypass_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every Q -> DQ pair on an activation is skipped (weights keep
    their Q/DQ): what the model computes with activation quantization switched off. The clamp a
    uint8/asymmetric range implied (ONNX Runtime deletes that Relu/Clip) is kept as a Clip."""
    return _bypass(model)[0]


def _bypass(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``bypass_activation_qdq`` and its aliases: bypassed DQ output name -> the Q's input."""
    from .asymmetric import materialize_implied_clamps

    out = onnx.ModelProto()
    out.CopyFrom(model)
    materialize_implied_clamps(out)
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
        return out, alias
    for name in alias:  # a Q/DQ chain (Q -> DQ -> Q -> DQ) bypasses to the first Q's input
        seen = alias[name]
        while seen in alias:
            seen = alias[seen]
        alias[name] = seen
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    for o in g.output:
        if o.name in alias:  # a graph output behind a Q/DQ pair: keep its name with an Identity
            g.node.append(onnx.helper.make_node("Identity", [alias[o.name]], [o.name]))
    kept = [n for n in g.node if not (n.op_type == "DequantizeLinear" and n.output[0] in alias)]
    read = {i for n in kept for i in n.input} | {o.name for o in g.output}
    # the activation Qs that only the bypassed DQs read go too
    keep = [n for n in kept if not (n.output[0] in q_input and n.output[0] not in read)]
    del g.node[:]
    g.node.extend(keep)
    return out, alias


def measure_ranges(model: onnx.ModelProto, data: CalibrationData) -> dict[str, float]:
    """The calibration pre-pass: the largest finite |x| every activation tensor of ``model``
    takes on the samples with activation quantization off (tensor name -> amax; a bypassed DQ's
    output has its Q input's range). Tensors no sample reached, or that stay 0, are left out."""
    return measure_ranges_and_means(model, data, set())[0]


def measure_ranges_and_means(
    model: onnx.ModelProto, data: CalibrationData, mean_of: set[str]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``measure_ranges``, and in the same inference pass the mean per channel (axis 1, over
    samples and every other axis) of each tensor in ``mean_of`` (a bypassed DQ's output has its Q
    input's): the rules that re-round a weighted op's weights keep its output mean with the
    means of its data input (``actions/mean_keep.py``)."""
    bypassed, alias = _bypass(model)
    constants = {t.name for t in model.graph.initializer}
    names = {i.name for i in model.graph.input if i.name not in constants}
    names.update(o for n in bypassed.graph.node if n.op_type != "Constant" for o in n.output if o)
    sources = {alias.get(t, t) for t in mean_of}
    peak, means = _peaks(bypassed, names | sources, data, sources)
    for dq_out, src in alias.items():
        if src in peak:
            peak[dq_out] = peak[src]
    ranges = {n: v for n, v in peak.items() if v > 0}
    return ranges, {t: means[alias.get(t, t)] for t in mean_of if alias.get(t, t) in means}


def measure_means(
    model: onnx.ModelProto, data: CalibrationData, mean_of: set[str]
) -> dict[str, np.ndarray]:
    """The means of ``measure_ranges_and_means`` alone: only the tensors in ``mean_of`` are
    fetched (the float model's Conv/Gemm inputs, ``api.float_input_means``)."""
    bypassed, alias = _bypass(model)
    sources = {alias.get(t, t) for t in mean_of}
    means = _peaks(bypassed, sources, data, sources)[1]
    return {t: means[alias.get(t, t)] for t in mean_of if alias.get(t, t) in means}


def _peaks(
    bypassed: onnx.ModelProto,
    names: set[str],
    data: CalibrationData,
    mean_of: set[str] = frozenset(),
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Largest finite |x| of each named tensor of an (activation-bypassed) model on the samples,
    and the per-channel mean of those in ``mean_of`` (all-finite batches of rank >= 2 only)."""
    peak: dict[str, float] = {}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for values in _batches_of(bypassed, names, data):
        for n, v in values.items():
            if n not in names:
                continue
            amax = _finite_amax(np.asarray(v))
            if amax is not None:
                peak[n] = max(peak.get(n, 0.0), amax)
            if n in mean_of:
                v = np.asarray(v, dtype=np.float64)
                if v.ndim < 2 or not np.isfinite(v).all():
                    continue
                total = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1).sum(axis=1)
                if n in sums and sums[n].shape != total.shape:
                    continue
                sums[n] = sums.get(n, 0.0) + total
                counts[n] = counts.get(n, 0) + v.size // v.shape[1]
    return peak, {n: sums[n] / counts[n] for n in sums if counts.get(n)}


def _finite_amax(v: np.ndarray) -> float | None:
    """Largest finite |x| of an array (None when it has none, or holds no numbers)."""
    if not (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_) or v.size == 0:
        return None  # e.g. a string tensor: no range
    v = v.astype(np.float32, copy=False)
    amax = float(max(v.max(), -v.min()))  # no |x| temporary: the common, all-finite case
    if np.isfinite(amax):
        return amax
    a = np.abs(v)
    a = a[np.isfinite(a)]  # an overflowing activation must not set the range
    return float(a.max()) if a.size else None


def observed_ranges(
    model: onnx.ModelProto, groups: Sequence[Sequence[str]], data: CalibrationData
) -> list[float | None]:
    """Per group of tensor names: the largest finite |x| any of them takes on the samples, with
    activation quantization off (None where no sample reached the group)."""
    if not groups:
        return []
    peak = _peaks(bypass_activation_qdq(model), {n for g in groups for n in g}, data)[0]
    out: list[float | None] = []
    for g in groups:
        seen = [peak[n] for n in g if n in peak]
        out.append(max(seen) if seen and max(seen) > 0 else None)
    return out


HISTOGRAM_BINS = 2048


def _batches_of(bypassed: onnx.ModelProto, names: set[str], data: CalibrationData):
    """Per ONNX Runtime batch of the samples: the named tensors of an activation-bypassed model
    (graph inputs included), for the pre-pass's measurements; ``data.runs`` becomes the number
    of batches."""
    from .runtime import feed_batches, session

    graph_inputs = {i.name for i in bypassed.graph.input}
    fetch = sorted(n for n in names if n not in graph_inputs)
    present = {o.name for o in bypassed.graph.output}
    for name in fetch:
        if name not in present:
            bypassed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = session(bypassed)
    batches = feed_batches(sess, data.arrays, dynamic_batch=1)
    data.runs = len(batches)
    for feed in batches:
        values = dict(zip(fetch, sess.run(fetch, feed), strict=True)) if fetch else {}
        values.update({n: feed[n] for n in graph_inputs if n in feed})
        yield values


def measure_histograms(
    model: onnx.ModelProto, data: CalibrationData, ranges: dict[str, float], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Part of the pre-pass: a histogram of |x| (``HISTOGRAM_BINS`` bins over ``[0, amax]``,
    amax from ``ranges``) of each named activation tensor on the samples, quantization off. The
    rules compare candidate scales on it (``histogram.quantization_error``) without running
    anything themselves."""
    bypassed, alias = _bypass(model)
    source = {n: alias.get(n, n) for n in names if ranges.get(n, 0.0) > 0}
    if not source:
        return {}
    counts = {n: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for n in source}
    for values in _batches_of(bypassed, set(source.values()), data):
        for n, src in source.items():
            a = np.abs(np.asarray(values[src], dtype=np.float32).reshape(-1))
            a = a[np.isfinite(a)]
            h, _ = np.histogram(a, bins=HISTOGRAM_BINS, range=(0.0, ranges[n]))
            counts[n] += h
    return counts
