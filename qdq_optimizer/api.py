"""Library entry points: ``optimize`` and ``lint`` (the CLI commands are thin shells over these)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx

from .actions.mean_keep import INPUT_MEANS
from .actions.symmetric import OBSERVED_PAIRS
from .calibration import (
    CalibrationData,
    measure_histograms,
    measure_means,
    measure_ranges_and_means,
)
from .computed_params import fold_computed_params
from .contrib_qdq import to_default_domain
from .errors import UsageError
from .fixpoint import DEFAULT_MAX_ITERATIONS, apply_rules
from .graph import DEQUANTIZE, QUANTIZE, QGraph, name_matches
from .model_io import finalize
from .opset_upgrade import upgrade_opset
from .protos import FLOAT_TYPES, constant_tensors
from .reference_weights import REFERENCE_NAMES
from .report import OptimizeReport, Problem
from .ruleset import RuleSet, compile_ignore, load_ruleset
from .scale_groups import scale_groups
from .trt_checks import NODE_CHECKS, PARTLY_FIXED_BY, check_graph, check_warnings, unowned_checks

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


def canonical_input(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The exact rewrites made before anything reads a model (in place; callers pass their own
    copy), and a note for each that changed something: opset 10-12 upgraded to 13, ONNX Runtime's
    ``com.microsoft`` Q/DQ moved to the default domain, torch.onnx's computed Q/DQ parameters
    folded (``computed_params``)."""
    model, upgraded = upgrade_opset(model)
    model, moved = to_default_domain(model)
    model, folded = fold_computed_params(model)
    return model, [note for note in (upgraded, moved, folded) if note]


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
    lint_result: bool = True,
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
    With ``lint_result`` (default) the result is linted with the same rule set and ignore list
    (one dry-run pass plus the checks no rule owns): ``report.remaining_problems``.
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

    model, input_warnings = canonical_input(model)
    from .validate import validate_model

    t = time.perf_counter()  # validated before any pre-pass reads it: bad input is refused, once
    input_warnings.extend(validate_model(model))
    timings["validate"] = _ms(t)
    ref = None if reference is None else load(reference)
    if ref is not None:  # float weights for per-tensor int8 ones (weight-per-channel)
        run_settings.update(reference_weight_pre_pass(model, ref, input_warnings))
    if calibration_data is not None:  # the pre-pass: the rules get ranges, never run a model
        calibration_data.check(model)  # bad samples fail here, before any rule runs
        t, c = time.perf_counter(), time.process_time()
        run_settings.update(calibration_pre_pass(model, calibration_data))
        if ref is not None and _may_round_weights(model):  # the float model's input means
            means = float_input_means(ref, calibration_data)
            renamed = run_settings.get(REFERENCE_NAMES, {})
            means.update({op: means[r] for op, r in renamed.items() if r in means})
            run_settings[INPUT_MEANS].update(means)
        timings["calibration"] = _ms(t)
        timings["calibration_cpu"] = round((time.process_time() - c) * 1000, 3)

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
            lint_result,
            input_warnings,
        )

    if samples is not None and not dry_run:  # bad samples fail before any rule runs
        from .runtime import feed_batches, model_inputs

        feed_batches(model_inputs(model), samples)
    out, report = once(ruleset)
    if samples is None or dry_run:
        return out, report
    from .guard import run_guard

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


def _weighted_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """Conv/Gemm op name -> its data input tensor."""
    return {
        n.name: n.input[0]
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm") and n.name and len(n.input) > 1 and n.input[0]
    }


def float_input_means(reference: onnx.ModelProto, data: CalibrationData) -> dict[str, np.ndarray]:
    """The per-channel mean of every Conv/Gemm data input of the float model on the samples, by
    op name. The bias corrections of ``mean_keep`` aim at the float model's output mean, so they
    need its input means: the quantized model's pre-pass keeps its own weights, and per-tensor
    ones (ONNX Runtime's default) move every later layer's means (the PP-OCRv4 detector's ORT
    default graph, at 3.8 dB: its 1x1 convs' corrected output means missed the float ones by up to
    0.07, and the correction cost 0.8 dB instead of gaining)."""
    weighted = _weighted_inputs(reference)
    runs = data.runs
    means = measure_means(reference, data, set(weighted.values()))
    data.runs = runs
    return {op: means[t] for op, t in weighted.items() if t in means}


def _may_round_weights(model: onnx.ModelProto) -> bool:
    """Can a rule round a weight, so that a bias correction reads the input means? A weight it
    re-rounds (``may_reround_weights``), or any float constant of rank 2 or more (a superset of
    the float weights ``quantize-float-weights`` rounds, also behind an exporter's Identity or
    Transpose). Without one the float model is not run."""
    from .reference_weights import may_reround_weights

    if may_reround_weights(model):
        return True
    constants = constant_tensors(model).values()
    return any(t.data_type in FLOAT_TYPES and len(t.dims) >= 2 for t in constants)


def calibration_pre_pass(model: onnx.ModelProto, data: CalibrationData) -> dict[str, Any]:
    """What the rules get from calibration samples, measured once before they run: the largest
    |x| of every activation tensor (``observed_ranges``), the number of ONNX Runtime batches
    (``observed_runs``) and a histogram of |x| for every tensor an activation Q reads
    (``observed_histograms``), so scale choices compare errors without running a model, and the
    per-channel mean of every Conv/Gemm data input (``observed_input_means``, by op name), so a
    rule that re-rounds weights keeps the op's output mean."""
    weighted = _weighted_inputs(model)
    ranges, means = measure_ranges_and_means(model, data, set(weighted.values()))
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
        OBSERVED_PAIRS: _activation_pairs(model, constants),
        INPUT_MEANS: {op: means[t] for op, t in weighted.items() if t in means},
    }


def _activation_pairs(model: onnx.ModelProto, constants: set[str]) -> dict[str, tuple]:
    """Activation Q name -> (the tensor it reads, its scale values) when measured: a rule that
    reads a pair's range from ``observed_ranges`` uses it only while the pair still reads that
    tensor at that scale (a fold since, e.g. ``channel-scales``, changed the values)."""
    values = constant_tensors(model)
    pairs = {}
    for n in model.graph.node:
        if n.op_type == QUANTIZE and len(n.input) > 1 and n.input[0] not in constants:
            scale = values.get(n.input[1])
            if scale is not None:
                pairs[n.name] = (n.input[0], onnx.numpy_helper.to_array(scale).reshape(-1))
    return pairs


def reference_weight_pre_pass(
    model: onnx.ModelProto, reference: onnx.ModelProto, warnings: list[str]
) -> dict[str, Any]:
    """The float weights of ``reference`` that ``model``'s per-tensor int8 weights were rounded
    from (``reference_weights``), for ``weight-per-channel``; a warning names those it lacks. And
    the ops whose bias the producer corrected for its rounding (``corrected_biases``): only
    theirs keep their output mean when a rule re-rounds their weights (``mean_keep``)."""
    from .reference_weights import (
        BIAS_CORRECTED,
        FLOAT_WEIGHTS,
        corrected_biases,
        may_reround_weights,
        reference_ops,
        reference_weights,
    )

    if not may_reround_weights(model):
        return {}  # no rule re-rounds a weight: nothing to match, neither model indexed
    graphs = QGraph.from_model(model), QGraph.from_model(reference)  # indexed once for both
    ops = reference_ops(*graphs)  # which float op each weighted op was quantized from
    found, missing = reference_weights(model, reference, graphs, ops)
    corrected = corrected_biases(*graphs, ops)
    if missing:
        shown = ", ".join(f"'{n}'" for n in missing[:3]) + (" ..." if len(missing) > 3 else "")
        warnings.append(
            f"--reference: {len(missing)} re-rounded weight(s) ({shown}) have no float "
            "weight there that rounds to them (same node name or output, same shape, BN folded "
            "or not): "
            "per-tensor int8 ones stay per tensor, uint8/asymmetric ones are converted from "
            "their integer values"
        )
    settings: dict[str, Any] = {FLOAT_WEIGHTS: found} if found else {}
    if corrected:
        settings[BIAS_CORRECTED] = corrected
    renamed = {name: op.name for name, op in ops.items() if op.name != name}
    if renamed:  # the float model's input means are measured by its own op names
        settings[REFERENCE_NAMES] = renamed
    return settings


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
    lint_result: bool = True,
    input_warnings: list[str] | None = None,
) -> tuple[onnx.ModelProto, OptimizeReport]:
    """One run of a rule set over a loaded model (left unmodified: the graph is a copy)."""
    t = time.perf_counter()
    warnings = list(input_warnings or [])
    graph = QGraph.from_model(model)
    before = _stats(graph)
    timings["import"] = _ms(t)

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
    remaining = None
    lint_warnings: list[Problem] = []
    touched = {n for r in run.results for c in r.changes for n in c.nodes}
    if dry_run:
        out = model
        after = before
        warnings = _untouched_only(warnings, lambda name: name not in touched)
    else:
        dead = graph.cleanup()  # finalize would do it too; counted here for the report
        out, check_warnings = finalize(graph, reference=model)
        present = {n.name for n in out.graph.node} - touched
        warnings = _untouched_only(warnings, present.__contains__)
        warnings.extend(check_warnings)
        after = _stats(graph)
    timings["finalize"] = _ms(t)
    if lint_result and not dry_run:
        # State honestly what is left: lint the result with the same rule set and ignore list.
        t = time.perf_counter()
        lint_settings = {k: v for k, v in run_settings.items() if not k.startswith("observed_")}
        if "observed_ranges" in run_settings:
            lint_settings["scale_policy"] = ruleset.settings.get("scale_policy", "max")
        remaining = _lint_problems(graph, ruleset, patterns, lint_settings, None, max_iterations)[0]
        lint_warnings = _lint_warnings(graph, ruleset, patterns, None)
        timings["self_lint"] = _ms(t)
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
        remaining_problems=remaining,
        lint_warnings=lint_warnings,
    )
    return out, report


# validate's label for a node it warns about ("node 'NAME' (OpType)...")
_NODE_LABEL = re.compile(r"^node '(?P<name>.+?)' \(")


def _untouched_only(warnings: list[str], untouched) -> list[str]:
    """Drop "passed through untouched" warnings about nodes a rule removed or would change (e.g.
    int32 bias DQs that float-bias converts): the warning must be true of the result."""
    kept = []
    for w in warnings:
        m = _NODE_LABEL.match(w)
        if m and "passed through untouched" in w and not untouched(m.group("name")):
            continue
        kept.append(w)
    return kept


def _lint_problems(
    graph: QGraph,
    ruleset: RuleSet,
    patterns: list,
    settings: dict[str, Any],
    checks: bool | None,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    results: list | None = None,
) -> tuple[list[Problem], list]:
    """Lint of ``graph`` (not modified): each rule's finds (what it would change, and what it found but cannot
    fix) under its id, plus the TensorRT checks no rule of the set owns. Each problem once."""
    if results is None:
        run = apply_rules(
            graph,
            ruleset,
            dry_run=True,
            ignore=patterns,
            settings=settings,
            max_iterations=max_iterations,
        )
        results = run.results
    problems: list[Problem] = []
    changed_by: dict[str, set[str]] = {}  # action -> the nodes it would change
    for result in results:
        why = result.why.rstrip(".")
        for change in result.changes:
            message = f"{why} ({change.detail})" if change.detail else why
            problems.append(Problem(result.rule_id, list(change.nodes), message))
            changed_by.setdefault(result.action, set()).update(change.nodes)
        problems.extend(result.unfixable)
    changed = set().union(*changed_by.values())  # nodes some rule would change
    if _checks_on(ruleset, checks):
        only = unowned_checks(r.action for r in ruleset.rules)
        for p in check_graph(graph, ignore=patterns, only=only):
            if _all_ignored(p, patterns):
                continue
            if p.rule_id in NODE_CHECKS and set(p.node_names) <= changed:
                continue  # a rule re-quantizes or removes that node: reported under its id
            fixer = PARTLY_FIXED_BY.get(p.rule_id)
            if fixer and set(p.node_names) <= changed_by.get(fixer, set()):
                continue  # the part of the check that rule fixes: reported under its id
            problems.append(p)
    return _once(problems), results


def _checks_on(ruleset: RuleSet, checks: bool | None) -> bool:
    """``checks=None``: the TensorRT checks run when the rule set is (or extends) ``tensorrt`` or
    sets ``settings: {trt_checks: true}``."""
    if checks is None:
        return "tensorrt" in ruleset.chain or bool(ruleset.settings.get("trt_checks", False))
    return checks


def _lint_warnings(
    graph: QGraph, ruleset: RuleSet, patterns: list, checks: bool | None
) -> list[Problem]:
    """Lint's warnings (severity "warning") for ``graph``: TensorRT restrictions we report but do
    not count as problems (``trt_checks.WARNING_IDS``), with the TensorRT checks."""
    if not _checks_on(ruleset, checks):
        return []
    return [
        p
        for p in check_warnings(graph, patterns, [r.action for r in ruleset.rules])
        if not _all_ignored(p, patterns)
    ]


def _all_ignored(p: Problem, patterns: list) -> bool:
    """Every node the problem names is on the ignore list."""
    return bool(p.node_names) and all(name_matches(n, patterns) for n in p.node_names)


def _once(problems: list[Problem]) -> list[Problem]:
    """One report per problem: a Q/DQ pair two rules would both remove (e.g. the pair between
    a conv and its activation is also an output pair nothing INT8 reads) is reported by the
    first rule only, as the fixpoint would apply only that one."""
    seen: set[frozenset[str]] = set()
    out = []
    for p in problems:
        key = frozenset(p.node_names)
        if len(key) >= 2 and key in seen:
            continue
        seen.add(key)
        out.append(p)
    return out


def lint_report(
    model_or_path: ModelLike,
    rules: str | os.PathLike | RuleSet = "tensorrt",
    *,
    ignore: Iterable[str] = (),
    allow_asymmetric: bool = False,
    checks: bool | None = None,
) -> OptimizeReport:
    """Dry-run the rule set: each rule reports what it would change and what it found but
    cannot fix, under its id; plus TensorRT's placement checks that no rule of the set owns
    (``trt_checks.FIXED_BY``), so each problem is reported once. Problems go in
    ``report.problems``, the checks' warnings (``trt_checks.WARNING_IDS``, never problems) in
    ``report.lint_warnings``. ``checks=None`` runs the TensorRT checks when the rule set is (or
    extends) ``tensorrt`` or sets ``settings: {trt_checks: true}``."""
    ruleset = rules if isinstance(rules, RuleSet) else load_ruleset(rules)
    model, report = optimize(
        model_or_path,
        ruleset,
        ignore=ignore,
        dry_run=True,
        allow_asymmetric=allow_asymmetric,
    )
    patterns = [*ruleset.ignore, *compile_ignore(tuple(ignore))]
    graph = QGraph.from_model(model)
    report.problems = _lint_problems(graph, ruleset, patterns, {}, checks, results=report.results)[
        0
    ]
    report.lint_warnings = _lint_warnings(graph, ruleset, patterns, checks)
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
