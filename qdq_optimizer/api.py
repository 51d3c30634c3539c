"""Library entry points: ``optimize`` and ``lint`` (the CLI commands are thin shells over these)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx

from .calibration import CalibrationData, measure_histograms, measure_ranges
from .errors import UsageError
from .fixpoint import DEFAULT_MAX_ITERATIONS, apply_rules
from .graph import DEQUANTIZE, QUANTIZE, QGraph, name_matches
from .model_io import finalize
from .report import OptimizeReport, Problem
from .ruleset import RuleSet, compile_ignore, load_ruleset
from .scale_groups import scale_groups
from .trt_checks import check_graph

ModelLike = onnx.ModelProto | str | os.PathLike


def load(model_or_path: ModelLike) -> onnx.ModelProto:
    """A path is loaded (with external data) by model_io, which raises InputError for bad files.
    A ModelProto is copied, so the caller's model is never modified."""
    if isinstance(model_or_path, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model_or_path)
        return copy
    from .model_io import load_model

    return load_model(model_or_path)


def optimize(
    model_or_path: ModelLike,
    rules: str | os.PathLike | RuleSet = "tensorrt",
    *,
    ignore: Iterable[str] = (),
    dry_run: bool = False,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    allow_asymmetric: bool = False,
    keep_weight_q: bool = False,
    settings: dict[str, Any] | None = None,
    calibration_data: CalibrationData | str | os.PathLike | dict | None = None,
    samples: dict[str, np.ndarray] | str | os.PathLike | None = None,
    reference: ModelLike | None = None,
    max_loss_db: float | None = None,
) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Apply a rule set to a Q/DQ model; returns the rewritten model and what each rule did.

    The rule set and ``ignore`` regexes are validated before the model is read. In dry-run the
    returned model is the (unchanged) input and the report lists the changes rules would make.
    ``calibration_data`` (an ``.npz`` path, arrays keyed by input name, or ``CalibrationData``)
    selects the ``calibrated`` scale-group policy: scale groups that hold a residual skip get a
    scale covering the largest |x| seen on those samples. The ranges are measured once, before
    the rules run (``qdq_optimizer.calibration.measure_ranges``), and handed to them in settings.

    ``samples`` (arrays keyed by input name, or an ``.npz`` path) switch on the accuracy guard
    (``qdq_optimizer.guard``): each non-exact rule's leave-one-out effect on the output SQNR
    against ``reference`` (a float model; default: the input with quantization off) goes in
    ``report.guard``; with ``max_loss_db`` the costliest rules are backed out while the result
    loses more than that against the input, and ``guard.GuardFailed`` (exit 1) is raised when no
    single rule is to blame.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ruleset = rules if isinstance(rules, RuleSet) else load_ruleset(rules)
    patterns = [*ruleset.ignore, *compile_ignore(tuple(ignore))]
    run_settings = {**ruleset.settings, **(settings or {})}
    if keep_weight_q:
        run_settings["keep_weight_q"] = True
    run_settings.setdefault("keep_weight_q", False)
    if calibration_data is not None:
        if not isinstance(calibration_data, CalibrationData):
            calibration_data = (
                CalibrationData(dict(calibration_data))
                if isinstance(calibration_data, dict)
                else CalibrationData.load(calibration_data)
            )
        run_settings["scale_policy"] = "calibrated"

    if max_loss_db is not None and dry_run:
        raise UsageError("--max-loss-db needs a rewrite: drop --dry-run")
    if max_loss_db is not None and samples is None:
        raise UsageError("--max-loss-db needs samples (--inputs or --calibration-data)")
    if samples is not None and not isinstance(samples, dict):
        from .runtime import load_inputs

        samples = load_inputs(samples)

    t = time.perf_counter()
    model = load(model_or_path)
    timings["load"] = _ms(t)

    if calibration_data is not None:  # the pre-pass: the rules get ranges, never run a model
        calibration_data.check(model)  # bad samples fail here, before any rule runs
        t = time.perf_counter()
        run_settings.update(calibration_pre_pass(model, calibration_data))
        timings["calibration"] = _ms(t)

    def once(rs: RuleSet) -> tuple[onnx.ModelProto, OptimizeReport]:
        return _optimize_loaded(
            model,
            rs,
            patterns,
            run_settings,
            dry_run,
            max_iterations,
            allow_asymmetric,
            dict(timings),
            t0,
        )

    if samples is not None and not dry_run:  # bad samples fail before any rule runs
        from .runtime import feed_batches, model_inputs

        feed_batches(model_inputs(model), samples)
    out, report = once(ruleset)
    if samples is None or dry_run:
        return out, report
    from .guard import run_guard

    ref = None if reference is None else load(reference)
    label = os.fspath(reference) if isinstance(reference, str | os.PathLike) else None
    t = time.perf_counter()
    out, report = run_guard(
        model,
        ruleset,
        (out, report),
        once,
        samples,
        reference=ref,
        reference_label=label or ("reference model" if ref is not None else None),
        max_loss_db=max_loss_db,
        lint=lambda m: [
            str(p) for p in lint(m, ruleset, ignore=ignore, allow_asymmetric=allow_asymmetric)
        ],
    )
    report.timings_ms["guard"] = _ms(t)
    report.timings_ms["total"] = _ms(t0)
    return out, report


def calibration_pre_pass(model: onnx.ModelProto, data: CalibrationData) -> dict[str, Any]:
    """What the rules get from calibration samples, measured once before they run: the largest
    |x| of every activation tensor (``observed_ranges``), the number of ONNX Runtime batches
    (``observed_runs``) and a histogram of |x| for every tensor an activation Q reads
    (``observed_histograms``), so scale choices compare errors without running a model."""
    ranges = measure_ranges(model, data)
    runs = data.runs
    constants = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    quantized = sorted(
        {
            n.input[0]
            for n in model.graph.node
            if n.op_type == QUANTIZE and n.input and n.input[0] not in constants
        }
    )
    histograms = measure_histograms(model, data, ranges, quantized)
    data.runs = runs
    return {
        "observed_ranges": ranges,
        "observed_runs": runs,
        "observed_histograms": histograms,
    }


def _optimize_loaded(
    model: onnx.ModelProto,
    ruleset: RuleSet,
    patterns: list,
    run_settings: dict[str, Any],
    dry_run: bool,
    max_iterations: int,
    allow_asymmetric: bool,
    timings: dict[str, float],
    t0: float,
) -> tuple[onnx.ModelProto, OptimizeReport]:
    """One run of a rule set over a loaded model (left unmodified: the graph is a copy)."""
    from .validate import validate_model

    t = time.perf_counter()
    warnings = list(validate_model(model, allow_asymmetric=allow_asymmetric))
    graph = QGraph.from_model(model)
    before = _stats(graph)
    timings["validate_import"] = _ms(t)

    t = time.perf_counter()
    run = apply_rules(
        graph,
        ruleset,
        dry_run=dry_run,
        ignore=patterns,
        settings=run_settings,
        max_iterations=max_iterations,
    )
    timings["rules"] = _ms(t)
    warnings.extend(run.warnings)

    t = time.perf_counter()
    dead = 0
    if dry_run:
        out = model
        after = before
    else:
        dead = graph.cleanup()  # finalize would do it too; counted here for the report
        out, check_warnings = finalize(graph, reference=model)
        warnings.extend(check_warnings)
        after = _stats(graph)
    timings["finalize"] = _ms(t)
    timings["total"] = _ms(t0)

    report = OptimizeReport(
        rules=ruleset.name,
        rule_chain=list(ruleset.chain),
        dry_run=dry_run,
        iterations=run.iterations,
        converged=run.converged,
        max_iterations=max_iterations,
        results=run.results,
        warnings=warnings,
        stats={
            "dead_nodes_removed": dead,
            **{f"{k}_before": v for k, v in before.items()},
            **{f"{k}_after": v for k, v in after.items()},
        },
        timings_ms=timings,
    )
    return out, report


def lint_report(
    model_or_path: ModelLike,
    rules: str | os.PathLike | RuleSet = "tensorrt",
    *,
    ignore: Iterable[str] = (),
    allow_asymmetric: bool = False,
    checks: bool | None = None,
) -> OptimizeReport:
    """Dry-run the rule set, plus TensorRT's placement checks (``trt_checks.check_graph``);
    problems go in ``report.problems``. ``checks=None`` runs the TensorRT checks when the rule
    set is (or extends) ``tensorrt`` or sets ``settings: {trt_checks: true}``."""
    ruleset = rules if isinstance(rules, RuleSet) else load_ruleset(rules)
    model, report = optimize(
        model_or_path,
        ruleset,
        ignore=ignore,
        dry_run=True,
        allow_asymmetric=allow_asymmetric,
    )
    problems: list[Problem] = []
    for result in report.results:
        for change in result.changes:
            why = result.why.rstrip(".")
            message = f"{why} ({change.detail})" if change.detail else why
            problems.append(Problem(result.rule_id, list(change.nodes), message))
    if checks is None:
        checks = "tensorrt" in ruleset.chain or bool(ruleset.settings.get("trt_checks", False))
    if checks:
        patterns = [*ruleset.ignore, *compile_ignore(tuple(ignore))]
        for p in check_graph(QGraph.from_model(model), ignore=patterns):
            if p.node_names and all(name_matches(n, patterns) for n in p.node_names):
                continue  # every node it names is on the ignore list
            problems.append(p)
    report.problems = problems
    return report


def lint(
    model_or_path: ModelLike,
    rules: str | os.PathLike | RuleSet = "tensorrt",
    *,
    ignore: Iterable[str] = (),
    allow_asymmetric: bool = False,
    checks: bool | None = None,
) -> list[Problem]:
    """Placement problems: what the rules would change, plus the TensorRT lint checks."""
    return lint_report(
        model_or_path, rules, ignore=ignore, allow_asymmetric=allow_asymmetric, checks=checks
    ).problems


def quantizer_groups(model: onnx.ModelProto, rules: str | None = None) -> list[list[str]]:
    """Names of QuantizeLinear nodes that must share one scale, one list per group (groups of two
    or more only; deterministic, topological order). Used by the trainer to tie quantizers.

    With ``rules`` (a rule-set name or path), the groups are the ones that rule set will unify:
    none when it has no ``unify_scale_groups`` rule (e.g. ``cleanup``, or one that disables it)."""
    if rules is not None:
        if not any(r.action == "unify_scale_groups" for r in load_ruleset(rules).rules):
            return []
    graph = QGraph.from_model(model)
    groups = scale_groups(graph)
    return [[q.name for q in g.quantizers] for g in groups if len(g.quantizers) >= 2]


def _stats(graph: QGraph) -> dict[str, int]:
    nodes = graph.nodes
    return {
        "nodes": len(nodes),
        "quantize": sum(1 for n in nodes if n.op == QUANTIZE),
        "dequantize": sum(1 for n in nodes if n.op == DEQUANTIZE),
    }


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000.0
