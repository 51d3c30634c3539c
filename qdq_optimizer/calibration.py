"""Activation ranges from samples, for ``optimize --calibration-data`` (scale policy ``calibrated``).

TensorRT fuses a residual Add into its conv only when the skip arrives in INT8, so the rules
quantize skips that a naive export left float, borrowing the scale of another quantizer on that
tensor (a conv input's, calibrated to clip rare large values) or of its concat group. A clipped
skip value is not averaged away like a clipped conv input: it passes unchanged into the block's
output and every later block adds to it. With samples, a scale group that holds a residual skip
gets a scale that covers the largest |x| seen on them, measured by running the graph under
ONNX Runtime with its activation Q/DQ pairs bypassed (quantization off, weights still quantized:
how pytorch-quantization calibrates).
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
        from .verify import load_inputs

        return cls(load_inputs(path), os.fspath(path))

    def check(self, model: onnx.ModelProto) -> int:
        """Raise InputError unless the samples fit the model's inputs; the number of runs."""
        from .verify import feed_batches, model_inputs

        try:  # from the graph's inputs: no ONNX Runtime session (a big model's weights) needed
            return len(feed_batches(model_inputs(model), self.arrays, dynamic_batch=1))
        except InputError as exc:
            raise InputError(f"calibration data {self.source}: {exc}") from None


def bypass_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every Q -> DQ pair on an activation is skipped (weights keep
    their Q/DQ): what the model computes with activation quantization switched off. The clamp a
    uint8/asymmetric range implied (ONNX Runtime deletes that Relu/Clip) is kept as a Clip."""
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
        return out
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
    return out


def observed_ranges(
    model: onnx.ModelProto, groups: Sequence[Sequence[str]], data: CalibrationData
) -> list[float | None]:
    """Per group of tensor names: the largest finite |x| any of them takes on the samples, with
    activation quantization off (None where no sample reached the group)."""
    from .verify import feed_batches, session

    if not groups:
        return []
    graph_inputs = {i.name for i in model.graph.input}
    names = sorted({n for g in groups for n in g})
    fetch = [n for n in names if n not in graph_inputs]
    bypassed = bypass_activation_qdq(model)
    present = {o.name for o in bypassed.graph.output}
    for name in fetch:
        if name not in present:
            bypassed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = session(bypassed)
    batches = feed_batches(sess, data.arrays, dynamic_batch=1)
    data.runs = len(batches)
    peak: dict[str, float] = {}
    for feed in batches:
        values = dict(zip(fetch, sess.run(fetch, feed), strict=True)) if fetch else {}
        values.update({n: feed[n] for n in names if n in graph_inputs})
        for n, v in values.items():
            a = np.abs(np.asarray(v, dtype=np.float32))
            a = a[np.isfinite(a)]  # an overflowing activation must not set the range
            if a.size:
                peak[n] = max(peak.get(n, 0.0), float(a.max()))
    out: list[float | None] = []
    for g in groups:
        seen = [peak[n] for n in g if n in peak]
        out.append(max(seen) if seen and max(seen) > 0 else None)
    return out
