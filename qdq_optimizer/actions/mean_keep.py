"""A weighted op keeps its output mean when a rule re-rounds its weights (``keep_output_mean``).

A producer's bias correction (NNCF's fast bias correction, on by default) sets each bias so the
quantized layer's output mean matches the float layer's *for the weights it rounded*. Re-rounding
those weights (``weight-per-channel``; ``symmetric-int8`` re-quantizing uint8 or asymmetric
weights) moves output channel ``o``'s mean by ``sum((W_new - W_old)[o] * E[x])``, which the old
bias no longer cancels. Measured on NNCF's per-tensor-weight LRASPP MobileNetV3: re-rounding one
1x1 projection per channel cost 3.4 dB of output SQNR although its weight error fell 38 %, and
adding ``(W_old - W_new) . E[x]`` to its bias gave all of it back (+0.05 dB over the input).

With calibration samples the pre-pass measures ``E[x]`` per input channel of every Conv/Gemm data
input, quantization off (``calibration.measure_ranges_and_means``, by op name), and the rules that
re-round weights call ``keep_output_mean``: the output keeps the mean the producer gave it, so a
re-rounding changes only the spread of the weight error. Exact for the mean where every output
position reads whole inputs (a padded border reads zeros).

Only for biases the producer corrected, which the float model shows (``--reference``: the
bias differs from the float op's, plain or BN-folded; ``reference_weights.corrected_biases``).
An uncorrected bias (ONNX Runtime, ModelOpt) carried the old rounding's mean error too, and
keeping it gave back most of the gain: the PP-OCRv4 detector's ORT default graph fell from 10.53
to 4.56 dB. Without samples or the float model nothing is added.
"""

from __future__ import annotations

import numpy as np

from ..biases import float_bias, set_float_bias
from ..graph import Node, QGraph, Tensor
from ..reference_weights import BIAS_CORRECTED
from .registry import ActionContext

# the setting the calibration pre-pass fills: op name -> mean of its data input per channel
INPUT_MEANS = "observed_input_means"


def _mean_shift(op: Node, dw: np.ndarray, mu: np.ndarray) -> np.ndarray | None:
    """Per output channel: what ``dw`` (a weight change) adds to the op's output mean when its
    data input has per-channel mean ``mu``."""
    if op.op == "Conv":
        cout, cin_g = dw.shape[:2]
        groups = int(op.attrs.get("group", 1))
        if cout % groups or cin_g * groups != mu.size:
            return None
        per = dw.reshape(cout, cin_g, -1).sum(axis=2)
        cin = (np.arange(cout)[:, None] // (cout // groups)) * cin_g + np.arange(cin_g)[None, :]
        return (per * mu[cin]).sum(axis=1)
    if op.op == "Gemm":
        if op.attrs.get("transA", 0) or op.attrs.get("alpha", 1.0) != 1.0:
            return None
        if op.attrs.get("beta", 1.0) != 1.0:
            return None
        w = dw.T if op.attrs.get("transB", 0) else dw  # [K, N]
        return w.T @ mu if w.shape[0] == mu.size else None
    return None


def keep_means(
    graph: QGraph, weight: Tensor, w_old: np.ndarray, w_new: np.ndarray, ctx: ActionContext
) -> str | None:
    """``keep_output_mean`` for every op that reads ``weight`` as its weight (a shared weight
    re-rounded once moves each reader's mean); the first note, or None."""
    notes = [
        keep_output_mean(graph, op, w_old, w_new, ctx)
        for op in list(weight.outputs)
        if len(op.inputs) > 1 and op.inputs[1] is weight
    ]
    return next((n for n in notes if n), None)


def keep_output_mean(
    graph: QGraph, op: Node, w_old: np.ndarray, w_new: np.ndarray, ctx: ActionContext
) -> str | None:
    """Add ``(w_old - w_new) . E[x]`` to ``op``'s bias (the dequantized weights before and after
    a re-rounding); a note for the change's detail, or None when there is nothing to keep it
    with (no calibration samples, another op type, a bias of another form)."""
    mu = (ctx.settings.get(INPUT_MEANS) or {}).get(op.name)
    if mu is None or op.op not in ("Conv", "Gemm"):
        return None
    if op.name not in (ctx.settings.get(BIAS_CORRECTED) or ()):
        return None  # an uncorrected bias: the smaller rounding error is the gain, mean included
    shift = _mean_shift(op, np.asarray(w_old, np.float64) - np.asarray(w_new, np.float64), mu)
    if shift is None:
        return None
    bias = float_bias(graph, op, shift.size)
    if bias is None:
        return None
    if not ctx.dry_run:
        set_float_bias(graph, op, bias + shift)
    return f"bias keeps the output mean (calibration E[x]; largest shift {np.abs(shift).max():.3g})"
