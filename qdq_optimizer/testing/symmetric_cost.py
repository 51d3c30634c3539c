"""What the conversion to TensorRT's signed symmetric int8 costs, pair by pair.

``symmetric-int8`` is required (TensorRT runs only symmetric int8), so the accuracy guard can
measure it but never back it out. When a uint8 or asymmetric graph loses accuracy, the question
is where: this converts the input graph's activation pairs with the rule's own code (the clamp a
zero range edge implied re-inserted, the scale ``max(|lo|, |hi|) / 127``) all together, and each
pair alone with every other quantizer left as the producer made it, and scores each model's output
SQNR against the float reference on the held-out inputs. Nothing else is rewritten, so a cost is
the conversion's alone. ``half_codes`` marks ranges with an edge at 0 (a ReLU's ``[0, a]``): the
int8 grid then keeps 128 of the 256 codes the uint8 one had (step x2 or more).

``benchmarks/bench_symmetric_cost.py`` prints the table for corpus entries (docs/rules.md, Known
accuracy limits, quotes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .. import asymmetric as asym
from ..actions.registry import ActionContext
from ..actions.symmetric import (
    activation_quantizers,
    convert_activation,
    convert_activations,
    convert_weights,
    new_stats,
)
from ..graph import QGraph
from ..model_io import finalize
from .corpus import output_sqnr


@dataclass
class PairCost:
    """One activation pair converted alone: the rule's description of it and the output SQNR."""

    index: int  # the Q's index among the graph's Qs (graph order)
    q: str  # the Q node's name
    detail: str  # the rule's change text: kind, range, new scale, step ratio, Clip
    half_codes: bool  # a range edge at 0: the int8 grid keeps half the codes
    sqnr_db: float


@dataclass
class ConversionCost:
    """Output SQNR of the input, of all pairs converted (weights too), and of each pair alone."""

    sqnr_input_db: float
    sqnr_all_db: float
    pairs: list[PairCost] = field(default_factory=list)
    weights: int = 0  # uint8/asymmetric weights the rule re-quantizes (in ``sqnr_all_db``)

    @property
    def cost_db(self) -> float:
        return self.sqnr_all_db - self.sqnr_input_db


def _read(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as ``optimize`` reads it (a copy, after its exact input rewrites)."""
    from ..api import canonical_input, load

    return canonical_input(load(model))[0]


def convert(model: onnx.ModelProto, only: int | None = None) -> onnx.ModelProto:
    """``model`` converted as ``symmetric-int8`` converts it (activations and weights), or with
    ``only`` just the activation pair whose Q has that index (``activation_quantizers``)."""
    model = _read(model)
    graph = QGraph.from_model(model)
    ctx, stats = ActionContext(rule_id="symmetric-int8"), new_stats()
    convert_activations(graph, ctx, stats, only)
    if only is None:
        convert_weights(graph, ctx, stats)
    return finalize(graph, reference=model)[0]


def convertible_pairs(model: onnx.ModelProto) -> list[tuple[int, str, str, bool]]:
    """(Q index, Q name, the rule's change text, half codes?) of every activation pair the rule
    converts, from a dry run."""
    graph = QGraph.from_model(_read(model))
    ctx, stats, memo = ActionContext(rule_id="symmetric-int8", dry_run=True), new_stats(), {}
    found = []
    for i, q in activation_quantizers(graph, ctx):
        change = convert_activation(graph, q, ctx, stats, memo)
        if change is not None:
            p = graph.qparams(q)
            edge = asym.implied_clamp(asym.represented_range(p.scale, p.zero_point, p.dtype))
            found.append((i, q.name, change.detail, edge != (None, None)))
    return found


def conversion_costs(
    model: onnx.ModelProto | Path, reference: Path, inputs: Path
) -> ConversionCost:
    """Score the input, the fully converted graph and every activation pair converted alone
    (see the module docstring). ``reference`` is the float model, ``inputs`` an ``.npz``."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(model)
    graph = QGraph.from_model(_read(model))
    weights = convert_weights(graph, ActionContext(dry_run=True), new_stats())
    result = ConversionCost(
        sqnr_input_db=output_sqnr(model, reference, inputs),
        sqnr_all_db=output_sqnr(convert(model), reference, inputs),
        weights=len(weights),
    )
    for i, name, detail, half in convertible_pairs(model):
        sqnr = output_sqnr(convert(model, only=i), reference, inputs)
        result.pairs.append(PairCost(i, name, detail, half, sqnr))
    return result


# ------------------------------------------------------------------ scale alternatives (measured)
# Each alternative is a factor on a converted pair's max/127 scale, chosen from the calibration
# samples alone; none is adopted by the rule (docs/rules.md, Known accuracy limits, says what they
# gave on the corpus). Kept so those numbers can be reproduced.


def rescale_pairs(model: onnx.ModelProto, factors: dict[str, float]) -> onnx.ModelProto:
    """A copy of a converted ``model`` whose Qs named in ``factors`` (and their DQs) have their
    scale multiplied by the factor (a new initializer per pair: shared scales stay)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            readers.setdefault(n.input[0], []).append(n)
    for q in g.node:
        f = factors.get(q.name) if q.op_type == "QuantizeLinear" else None
        if f is None or f == 1.0:
            continue
        old = numpy_helper.to_array(inits[q.input[1]])
        new = numpy_helper.from_array((old * f).astype(old.dtype), f"{q.name}_scale_x{f:g}")
        g.initializer.append(new)
        for n in (q, *readers.get(q.output[0], [])):
            n.input[1] = new.name
    return out


def least_error_factors(
    model: onnx.ModelProto, calibration: Path, half_codes_only: bool = True
) -> dict[str, float]:
    """Per converted pair, the factor (0.30 ... 1.00) of its scale with the least quantization
    error on the calibration histograms (``histogram.quantization_error``)."""
    from ..api import calibration_pre_pass
    from ..calibration import CalibrationData
    from ..histogram import quantization_error

    pre = calibration_pre_pass(model, CalibrationData.load(calibration))
    hist, ranges = pre["observed_histograms"], pre["observed_ranges"]
    source = {n.name: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    scales = _converted_scales(convert(model))
    factors = {}
    for _, name, _, half in convertible_pairs(model):
        t = source.get(name)
        if (half_codes_only and not half) or t not in hist or name not in scales:
            continue
        candidates = np.linspace(0.3, 1.0, 141)
        errors = [quantization_error(hist[t], ranges[t], f * scales[name]) for f in candidates]
        factors[name] = float(candidates[int(np.argmin(errors))])
    return factors


def calibration_judged_factors(
    model: onnx.ModelProto, calibration: Path, candidates: tuple[float, ...] = (0.9, 0.8)
) -> dict[str, float]:
    """Greedy over the converted pairs in graph order: a candidate factor is kept when it raises
    the output SQNR on the calibration samples against the input with quantization off (what
    ``optimize`` could judge with --calibration-data alone). 2 x pairs model runs."""
    from ..calibration import bypass_activation_qdq
    from ..runtime import load_inputs, run
    from ..verify import sqnr

    feeds = load_inputs(calibration)

    def flat(m: onnx.ModelProto) -> np.ndarray:
        outs = run(m, feeds)
        return np.concatenate([outs[k].astype(np.float64).ravel() for k in sorted(outs)])

    reference = flat(bypass_activation_qdq(model))
    converted = convert(model)
    factors: dict[str, float] = {}
    best = sqnr(reference, flat(converted))
    for f in candidates:
        for _, name, _, _ in convertible_pairs(model):
            trial = {**factors, name: f}
            score = sqnr(reference, flat(rescale_pairs(converted, trial)))
            if score > best + 0.01:
                best, factors = score, trial
    return factors


def _converted_scales(converted: onnx.ModelProto) -> dict[str, float]:
    inits = {t.name: t for t in converted.graph.initializer}
    return {
        n.name: float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0])
        for n in converted.graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in inits
    }
