"""The accuracy guard: what each rule's rewrite costs on the output, and backing out the costly.

With samples, ``optimize`` measures the output SQNR (one number: signal and noise pooled over
every output) of the input model and of the optimized model against a reference: the float model
when given, else the input with its activation quantization switched off (activation Q/DQ pairs
bypassed, weights at their dequantized values). Each non-exact rule that changed something is then
left out, one at a time, and the model re-optimized: the rule's effect is the SQNR with it minus
the SQNR without it (negative: the rule costs accuracy).

With a limit (``--max-loss-db X``) the guard backs out the costliest rule while the optimized model
loses more than X dB against the input, re-measuring after each. When no single rule is to blame
(no rule's removal gains anything), or the costliest is one the graph needs (``REQUIRED_ACTIONS``),
it fails (``GuardFailed``, exit 1) and nothing is written.

The guard knows rules only by what their actions promise (``EXACT_ACTIONS``, ``REQUIRED_ACTIONS``)
and runs models through ``verify.run`` alone, so it stays the one place that judges accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import CheckFailed, InputError
from .report import OptimizeReport
from .ruleset import Rule, RuleSet
from .verify import json_db

# Actions whose rewrite leaves every output bit-identical (weights folded to the int8 values the Q
# computed, float biases the DQ computed, cleanup merges): nothing to measure. Every rule of the
# `cleanup` set is exact by that set's contract too.
EXACT_ACTIONS = frozenset(
    {"collapse_dq_q", "merge_duplicates", "drop_dead_qdq", "fold_weight_q", "float_bias"}
    | {"float_params"}  # xrules: norm_params.py, bit-exact like float_bias
)
EXACT_SETS = frozenset({"cleanup"})
# Actions the guard measures but never backs out, with the reason given when one is the cost:
# the user's ignore list, and a conversion without which TensorRT cannot build the graph.
REQUIRED_ACTIONS = {
    "dequantize_ignored": "it applies the ignore list",
    "symmetric_int8": "TensorRT builds only signed symmetric int8 Q/DQ",
}
# An effect smaller than this (dB) does not make a rule "to blame".
BLAME_EPS_DB = 0.01
# without --max-loss-db the guard only measures; a loss beyond this is said in a warning, so an
# accuracy loss the samples show is never silent (the corpus criterion's tolerance)
WARN_LOSS_DB = 0.5

Outputs = dict[str, np.ndarray]
Rerun = Callable[[RuleSet], tuple[onnx.ModelProto, OptimizeReport]]


class GuardFailed(CheckFailed):
    """The optimized model loses more than ``--max-loss-db`` and no rule can be backed out."""


@dataclass
class RuleEffect:
    """One rule's leave-one-out effect on the output SQNR."""

    rule_id: str
    changes: int
    sqnr_without_db: float
    effect_db: float  # SQNR with the rule minus without it: negative when the rule costs
    required: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "changes": self.changes,
            "sqnr_without_db": _finite(self.sqnr_without_db),
            "effect_db": _finite(self.effect_db),
            "required": self.required,
        }


@dataclass
class GuardReport:
    """What the guard measured and did; ``OptimizeReport.guard`` holds its ``to_dict``."""

    reference: str
    samples: int
    sqnr_input_db: float
    sqnr_output_db: float  # of the model returned (after any back-out)
    sqnr_all_rules_db: float  # of the model the whole rule set made
    effects: list[RuleEffect] = field(default_factory=list)
    max_loss_db: float | None = None
    backed_out: list[dict[str, Any]] = field(default_factory=list)  # {rule_id, sqnr_after_db}
    problems_after: list[str] | None = None  # lint of the returned model when rules were backed out

    @property
    def loss_db(self) -> float:
        return self.sqnr_input_db - self.sqnr_output_db

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "samples": self.samples,
            "sqnr_input_db": _finite(self.sqnr_input_db),
            "sqnr_all_rules_db": _finite(self.sqnr_all_rules_db),
            "sqnr_output_db": _finite(self.sqnr_output_db),
            "loss_db": _finite(self.loss_db),
            "max_loss_db": self.max_loss_db,
            "effects": [e.to_dict() for e in self.effects],
            "backed_out": list(self.backed_out),
            "problems_after": self.problems_after,
        }


def is_exact(rule: Rule) -> bool:
    """True when the rule's rewrite is bit-exact (the guard skips it)."""
    return rule.action in EXACT_ACTIONS or Path(rule.source).stem in EXACT_SETS


def pooled_sqnr(reference: Outputs, test: Outputs) -> float:
    """SQNR (dB) over every output the two share, signal and noise summed over all of them (so a
    large output does not hide behind a small one as in a mean of per-output dB)."""
    signal = noise = 0.0
    for name, r in reference.items():
        t = test.get(name)
        if t is None or t.shape != r.shape:
            continue
        r64, t64 = r.astype(np.float64), t.astype(np.float64)
        signal += float(np.sum(r64**2))
        noise += float(np.sum((r64 - t64) ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class _Scorer:
    """SQNR of models against one reference on one set of samples (reference run once)."""

    def __init__(
        self, reference: onnx.ModelProto, model: onnx.ModelProto, samples: dict[str, np.ndarray]
    ) -> None:
        self.samples = samples
        self.reference = self.outputs(reference)
        names = {o.name for o in model.graph.output}
        if not names & set(self.reference):
            raise InputError(
                "the reference model shares no output name with the input "
                f"({', '.join(sorted(self.reference))} vs {', '.join(sorted(names))})"
            )

    @staticmethod
    def _run(model: onnx.ModelProto, samples: dict[str, np.ndarray]) -> Outputs:
        from .runtime import run  # the one ONNX Runtime call site of the guard

        return run(model, samples)

    def outputs(self, model: onnx.ModelProto) -> Outputs:
        return self._run(model, self.samples)

    def sqnr(self, model: onnx.ModelProto) -> float:
        return self.score(self.outputs(model))

    def score(self, outputs: Outputs) -> float:
        """SQNR of outputs already run against the reference."""
        return pooled_sqnr(self.reference, outputs)


def quantization_off(model: onnx.ModelProto) -> onnx.ModelProto:
    """The guard's default reference: the input with its activation Q/DQ pairs bypassed."""
    from .calibration import bypass_activation_qdq

    return bypass_activation_qdq(model)


def without(ruleset: RuleSet, rule_ids: set[str] | list[str]) -> RuleSet:
    """A copy of ``ruleset`` with the named rules disabled."""
    drop = set(rule_ids)
    return replace(ruleset, rules=[r for r in ruleset.rules if r.id not in drop])


def run_guard(
    model: onnx.ModelProto,
    ruleset: RuleSet,
    optimized: tuple[onnx.ModelProto, OptimizeReport],
    rerun: Rerun,
    samples: dict[str, np.ndarray],
    *,
    reference: onnx.ModelProto | None = None,
    reference_label: str | None = None,
    max_loss_db: float | None = None,
    lint: Callable[[onnx.ModelProto], list[str]] | None = None,
) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Measure every non-exact rule's effect, back out rules while the loss exceeds
    ``max_loss_db``; returns the model and report to keep (``report.guard`` filled in).

    ``model`` is the input, ``optimized`` what the whole rule set made of it, ``rerun(ruleset)``
    optimizes the input with another rule set, ``lint(model)`` lists the problems the whole rule
    set still finds (asked only when rules were backed out). Raises GuardFailed."""
    given = reference is not None
    if reference is None:
        reference, reference_label = quantization_off(model), "input, quantization off"
    scorer = _Scorer(reference, model, samples)
    in_outputs = scorer.outputs(model)
    s_in = scorer.score(in_outputs)
    out, report = optimized
    out_outputs = scorer.outputs(out)
    s_all = s_out = scorer.score(out_outputs)
    effects = _leave_one_out(ruleset, report, rerun, scorer, s_all, set())
    guard = GuardReport(
        reference=reference_label or "reference model",
        samples=_count(samples),
        sqnr_input_db=s_in,
        sqnr_output_db=s_out,
        sqnr_all_rules_db=s_all,
        effects=effects,
        max_loss_db=max_loss_db,
    )
    disabled: list[str] = []
    current = effects
    while max_loss_db is not None and s_in - s_out > max_loss_db:
        worst = min(current, key=lambda e: e.effect_db, default=None)
        loss = f"the optimized model loses {s_in - s_out:.2f} dB against the input (limit {max_loss_db:g} dB"
        if worst is None or worst.effect_db > -BLAME_EPS_DB:
            backed = f"; backed out {', '.join(disabled)}" if disabled else ""
            raise GuardFailed(f"{loss}{backed}) and no single rule is to blame")
        if worst.required:
            why = REQUIRED_ACTIONS[ruleset.rule(worst.rule_id).action]
            raise GuardFailed(
                f"{loss}): rule '{worst.rule_id}' costs {-worst.effect_db:.2f} dB and cannot be "
                f"backed out ({why})"
            )
        disabled.append(worst.rule_id)
        out, report = rerun(without(ruleset, disabled))
        out_outputs = scorer.outputs(out)
        s_out = scorer.score(out_outputs)
        guard.backed_out.append({"rule_id": worst.rule_id, "sqnr_after_db": _finite(s_out)})
        if s_in - s_out > max_loss_db:
            current = _leave_one_out(ruleset, report, rerun, scorer, s_out, set(disabled))
    guard.sqnr_output_db = s_out
    if max_loss_db is None and s_in - s_out > WARN_LOSS_DB:
        report.warnings.append(_loss_warning(guard, effects))
    if disabled and lint is not None:
        guard.problems_after = lint(out)
    report.guard = guard.to_dict()
    # what --verify on the same samples would run again: the input's, the result's and a given
    # reference's outputs
    report.sample_outputs = {"input": in_outputs, "output": out_outputs}
    if given:
        report.sample_outputs["reference"] = scorer.reference
    return out, report


def _loss_warning(guard: GuardReport, effects: list[RuleEffect]) -> str:
    """One line: what the output lost, the rules that cost most, and the way to back them out."""
    costly = sorted((e for e in effects if e.effect_db < -BLAME_EPS_DB), key=lambda e: e.effect_db)
    blame = ", ".join(f"{e.rule_id} {e.effect_db:+.2f} dB" for e in costly[:3]) or "no single rule"
    return (
        f"the output loses {guard.sqnr_input_db - guard.sqnr_output_db:.2f} dB of output SQNR "
        f"against the input on {guard.samples} sample(s) (vs {guard.reference}; costliest: "
        f"{blame}); --max-loss-db DB backs rules out, docs/rules.md 'Known accuracy limits' "
        "says which losses are the placement TensorRT needs"
    )


def _leave_one_out(
    ruleset: RuleSet,
    report: OptimizeReport,
    rerun: Rerun,
    scorer: _Scorer,
    s_with: float,
    disabled: set[str],
) -> list[RuleEffect]:
    """Effects of the rules that changed something in ``report`` and are not exact."""
    effects = []
    for result in report.results:
        rule = ruleset.rule(result.rule_id)
        if rule is None or result.count == 0 or is_exact(rule) or rule.id in disabled:
            continue
        model, _ = rerun(without(ruleset, disabled | {rule.id}))
        s = scorer.sqnr(model)
        effects.append(
            RuleEffect(rule.id, result.count, s, _diff(s_with, s), rule.action in REQUIRED_ACTIONS)
        )
    return effects


def _diff(a: float, b: float) -> float:
    return 0.0 if a == b else a - b  # inf - inf (both bit-identical to the reference) is no effect


def _count(samples: dict[str, np.ndarray]) -> int:
    sizes = [np.shape(v)[0] for v in samples.values() if np.ndim(v)]
    return int(max(sizes)) if sizes else 1


def _finite(v: float) -> float | str:
    return json_db(round(float(v), 4))
