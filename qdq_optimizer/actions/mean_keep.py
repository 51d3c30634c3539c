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
re-round weights call ``keep_output_mean``. Exact for the mean where every output position reads
whole inputs (a padded border reads zeros).

- A bias the producer corrected, which the float model shows (``--reference``: the bias differs
  from the float op's, plain or BN-folded; ``reference_weights.corrected_biases``): the output
  keeps the mean the producer gave it, so a re-rounding changes only the spread of the error.
- An uncorrected bias (ONNX Runtime, ModelOpt) carried the old rounding's mean error, so keeping
  that mean gave back most of the gain (the PP-OCRv4 detector's ORT default graph fell from
  10.53 to 4.56 dB). When the rule re-rounds from the float weight ``W_f`` it knows, the bias
  gets ``(W_f - W_new) . E[x]`` instead: the output mean becomes the float layer's, as bias
  correction (Nagel et al., 2019) makes it. ``E[x]`` is then the float model's own input mean
  where ``--reference`` has the op (``api.float_input_means``): the quantized model's coarse
  weights move later layers' means. An image-reading first conv shows why: its input's
  mean is 0.4-0.5, so a weight rounding's sum per output channel is an output offset. On the
  seed's YOLOv8n-like model (ORT per-tensor weights) re-rounding that conv per channel cost
  0.60 dB at the output although its weight error fell 35 %; with the correction -0.01.

Without samples, or (uncorrected) without the float weight, nothing is added.
"""

from __future__ import annotations

import numpy as np

from ..biases import float_bias, set_float_bias
from ..graph import Node, QGraph, Tensor
from ..reference_weights import BIAS_CORRECTED
from .registry import ActionContext

# the setting the calibration pre-pass fills: op name -> mean of its data input per channel
INPUT_MEANS = "observed_input_means"


def output_mean_shift(op: Node, dw: np.ndarray, mu: np.ndarray) -> np.ndarray | None:
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
    graph: QGraph,
    weight: Tensor,
    w_old: np.ndarray,
    w_new: np.ndarray,
    ctx: ActionContext,
    w_float: np.ndarray | None = None,
) -> str | None:
    """``keep_output_mean`` for every op that reads ``weight`` as its weight (a shared weight
    re-rounded once moves each reader's mean); the first note, or None."""
    notes = [
        keep_output_mean(graph, op, w_old, w_new, ctx, w_float)
        for op in list(weight.outputs)
        if len(op.inputs) > 1 and op.inputs[1] is weight
    ]
    return next((n for n in notes if n), None)


def keep_output_mean(
    graph: QGraph,
    op: Node,
    w_old: np.ndarray,
    w_new: np.ndarray,
    ctx: ActionContext,
    w_float: np.ndarray | None = None,
) -> str | None:
    """Move ``op``'s bias by ``(w_old - w_new) . E[x]`` (a bias the producer corrected) or, for an
    uncorrected one, by ``(w_float - w_new) . E[x]`` when the float weight the rule re-rounded is
    known (the dequantized weights before and after the re-rounding); a note for the change's
    detail, or None when there is nothing to do it with (no calibration samples, no float weight
    for an uncorrected bias, another op type, a bias of another form)."""
    mu = (ctx.settings.get(INPUT_MEANS) or {}).get(op.name)
    if mu is None or op.op not in ("Conv", "Gemm"):
        return None
    corrected = op.name in (ctx.settings.get(BIAS_CORRECTED) or ())
    if corrected:
        target, what = w_old, "keeps the output mean"
    elif w_float is not None:
        target, what = w_float, "takes the float model's output mean"
    else:
        return None  # an uncorrected bias and no float weight: the old mean was no better
    shift = output_mean_shift(
        op, np.asarray(target, np.float64) - np.asarray(w_new, np.float64), mu
    )
    if shift is None:
        return None
    bias = float_bias(graph, op, shift.size)
    if bias is None:
        return None
    if not ctx.dry_run:
        set_float_bias(graph, op, bias + shift)
    return f"bias {what} (calibration E[x]; largest shift {np.abs(shift).max():.3g})"
