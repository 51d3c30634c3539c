"""Library entry points: ``optimize`` and ``lint`` (the CLI commands are thin shells over these)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import onnx

from .calibration import CalibrationData
from .engine import DEFAULT_MAX_ITERATIONS, apply_rules, finalize
from .graph import DEQUANTIZE, QUANTIZE, QGraph, name_matches
from .report import OptimizeReport, Problem
from .ruleset import RuleSet, compile_ignore, load_ruleset
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
) -> tuple[onnx.ModelProto, OptimizeReport]:
    """Apply a rule set to a Q/DQ model; returns the rewritten model and what each rule did.

    The rule set and ``ignore`` regexes are validated before the model is read. In dry-run the
    returned model is the (unchanged) input and the report lists the changes rules would make.
    ``calibration_data`` (an ``.npz`` path, arrays keyed by input name, or ``CalibrationData``)
    selects the ``calibrated`` scale-group policy: scale groups that hold a residual skip get a
    scale covering the largest |x| seen on those samples (``qdq_optimizer.calibration``).
    ``allow_asymmetric`` is deprecated and ignored: uint8 and asymmetric int8 are always accepted
    (the ``symmetric-int8`` rule converts them).
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
        run_settings["calibration"] = calibration_data
        run_settings["scale_policy"] = "calibrated"

    t = time.perf_counter()
    model = load(model_or_path)
    timings["load"] = _ms(t)

    from .opset_upgrade import upgrade_opset
    from .validate import validate_model

    t = time.perf_counter()
    model, upgraded = upgrade_opset(model)
    warnings = [upgraded] if upgraded else []
    warnings.extend(validate_model(model))
    if calibration_data is not None:  # bad samples fail here, before any rule runs
        calibration_data.check(model)
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


def _stats(graph: QGraph) -> dict[str, int]:
    nodes = graph.nodes
    return {
        "nodes": len(nodes),
        "quantize": sum(1 for n in nodes if n.op == QUANTIZE),
        "dequantize": sum(1 for n in nodes if n.op == DEQUANTIZE),
    }


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000.0
