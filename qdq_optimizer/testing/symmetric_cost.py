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

import onnx

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
from ..opset_upgrade import upgrade_opset
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


def convert(model: onnx.ModelProto, only: int | None = None) -> onnx.ModelProto:
    """``model`` converted as ``symmetric-int8`` converts it (activations and weights), or with
    ``only`` just the activation pair whose Q has that index (``activation_quantizers``)."""
    model, _ = upgrade_opset(model)
    graph = QGraph.from_model(model)
    ctx, stats = ActionContext(rule_id="symmetric-int8"), new_stats()
    convert_activations(graph, ctx, stats, only)
    if only is None:
        convert_weights(graph, ctx, stats)
    return finalize(graph, reference=model)[0]


def convertible_pairs(model: onnx.ModelProto) -> list[tuple[int, str, str, bool]]:
    """(Q index, Q name, the rule's change text, half codes?) of every activation pair the rule
    converts, from a dry run."""
    graph = QGraph.from_model(upgrade_opset(model)[0])
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
    graph = QGraph.from_model(upgrade_opset(model)[0])
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
