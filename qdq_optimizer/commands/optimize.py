"""``qdqopt optimize IN OUT --rules NAME``: rewrite Q/DQ placement and report what changed.

Nothing is written unless the whole run succeeds: the output path is checked before any work,
verification runs on the in-memory result, and model and report are written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..errors import CheckFailed, UsageError
from ..fileio import check_output_path, write_text_atomic
from ..fixpoint import DEFAULT_MAX_ITERATIONS
from ..report import OptimizeReport
from .cli_help import epilog, ignore_options, rules_option

MAX_WARNINGS = 10  # the rest go to --report
MAX_REMAINING = 10  # remaining problems printed; all are in --report


@click.command(
    name="optimize",
    epilog=epilog(
        "qdqopt optimize model.onnx out/model-opt.onnx --rules yolov7",
        "qdqopt optimize model.onnx out/model-opt.onnx --rules yolov8 \\",
        "    --calibration-data calib.npz --inputs val.npz --reference float.onnx",
        "qdqopt optimize model.onnx --dry-run -v --ignore 'model\\.77\\.'",
        ok="OUT written (or the dry run reported)",
    ),
)
@click.argument("input_path", metavar="IN", type=click.Path(dir_okay=False, path_type=Path))
@click.argument(
    "output_path", metavar="OUT", required=False, type=click.Path(dir_okay=False, path_type=Path)
)
@rules_option()
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report as JSON.",
)
@click.option("--verify", is_flag=True, help="Compare input and output under ONNX Runtime.")
@click.option(
    "--inputs",
    "inputs_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Inputs for --verify and the accuracy guard (.npz keyed by input name, first axis "
    "samples, uint8 images scaled by 1/255); default: seeded random.",
)
@click.option(
    "--reference",
    "reference_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Float model: --verify also prints SQNR of input and output against it, the "
    "accuracy guard measures against it, and per-tensor int8 weights are re-quantized per "
    "channel from its weights (weight-per-channel; matched by node name and value).",
)
@click.option(
    "--calibration-data",
    "calibration_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Samples (.npz keyed by input name, uint8 images scaled by 1/255): residual-skip "
    "scale groups get a scale covering the largest |x| seen (policy: calibrated).",
)
@click.option(
    "--max-loss-db",
    type=click.FloatRange(min=0),
    default=None,
    metavar="DB",
    help="Accuracy guard limit: back out the costliest rule while OUT loses more than DB "
    "(output SQNR against --reference, else the input with quantization off) than IN; exit 1 "
    "and write nothing when no single rule is to blame. Needs --inputs or --calibration-data.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random --verify inputs.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Run one pass of the rules and report what it would change; write no model.",
)
@click.option("-v", "--verbose", is_flag=True, help="List the nodes each rule touched.")
@ignore_options
@click.option("--keep-weight-q", is_flag=True, help="Keep Q nodes on float weights.")
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 when lint still finds problems in the result (OUT and the report are written).",
)
@click.option(
    "--max-iterations",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ITERATIONS,
    show_default=True,
    help="Bound on fixpoint iterations.",
)
def command(
    input_path: Path,
    output_path: Path | None,
    rules: str,
    report_path: Path | None,
    verify: bool,
    inputs_path: Path | None,
    reference_path: Path | None,
    calibration_path: Path | None,
    max_loss_db: float | None,
    seed: int,
    dry_run: bool,
    verbose: bool,
    ignore: tuple[str, ...],
    allow_asymmetric: bool,
    keep_weight_q: bool,
    strict: bool,
    max_iterations: int,
) -> None:
    """Rewrite the Q/DQ placement of IN by a rule set and write OUT."""
    from ..api import optimize
    from ..model_io import save_model
    from ..ruleset import compile_ignore, load_ruleset

    if output_path is None and not dry_run:
        raise UsageError("missing OUT (or pass --dry-run)")
    if output_path is not None and not dry_run:
        check_output_path(output_path, input_path)
    if report_path is not None:
        check_output_path(report_path, input_path, *([output_path] if output_path else []))
        if output_path is not None and report_path.resolve() == output_path.resolve():
            raise UsageError(f"--report must differ from OUT: {report_path}")
    ruleset = load_ruleset(rules)  # rule errors before any model work
    compile_ignore(ignore)
    feeds = None
    if inputs_path is not None:
        from ..runtime import load_inputs

        feeds = load_inputs(inputs_path)
    calibration = None
    if calibration_path is not None:
        from ..calibration import CalibrationData

        calibration = CalibrationData.load(calibration_path)

    model, report = optimize(
        input_path,
        ruleset,
        ignore=ignore,
        dry_run=dry_run,
        max_iterations=max_iterations,
        allow_asymmetric=allow_asymmetric,
        keep_weight_q=keep_weight_q,
        calibration_data=calibration,
        # the accuracy guard measures on --inputs, else on the calibration samples
        samples=feeds if feeds is not None else (calibration.arrays if calibration else None),
        reference=reference_path,
        max_loss_db=max_loss_db,
    )
    verify = verify or inputs_path is not None or reference_path is not None
    if verify and not dry_run:
        from ..verify import verify_outputs, verify_rewrite

        ran = report.sample_outputs or {}
        if feeds is not None and (reference_path is None or "reference" in ran):
            # the guard ran these models on the same --inputs: compare its outputs
            report.verify = verify_outputs(ran)
        else:
            # ONNX Runtime reads the input and the reference from their files (already loaded
            # and checked by optimize): no second in-memory copy of a big model
            report.verify = verify_rewrite(input_path, model, feeds, seed, reference_path)
    if not dry_run:
        save_model(model, output_path)
    if report_path is not None:
        write_text_atomic(report_path, report.to_json())
    print_report(report, verbose=verbose, target=None if dry_run else output_path)
    if strict and report.remaining_problems:
        raise CheckFailed(
            f"--strict: {len(report.remaining_problems)} problem(s) remain in {output_path}"
        )


def _db(v: float | str) -> str:
    if isinstance(v, str):
        return v
    return ("inf" if v > 0 else "-inf") if math.isinf(v) else f"{v:.2f}"


def summary_line(report: OptimizeReport) -> str:
    """Counts before/after and how the loop ended; a dry run says what one pass can know."""
    s = report.stats
    if report.dry_run:
        # the rules saw only the unchanged graph: later passes (after the first one's rewrites)
        # find more or fewer matches, so no fixpoint or final node count is known
        return (
            f"nodes {s['nodes_before']}, Q {s['quantize_before']}, "
            f"DQ {s['dequantize_before']}; would make {report.total_changes} change(s) in the "
            "first pass (dry run: the real run repeats passes until nothing changes, so its "
            "count can differ)"
        )
    loop = "fixpoint" if report.converged else "bound hit"
    return (
        f"nodes {s['nodes_before']} -> {s['nodes_after']}, "
        f"Q {s['quantize_before']} -> {s['quantize_after']}, "
        f"DQ {s['dequantize_before']} -> {s['dequantize_after']}; "
        f"{report.total_changes} change(s) in {report.iterations} iteration(s) ({loop})"
    )


def print_report(report: OptimizeReport, *, verbose: bool, target: Path | None) -> None:
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    title = f"rules: {' > '.join(report.rule_chain)}" + (
        " (dry run: first pass only)" if report.dry_run else ""
    )
    table = Table(title=title, title_justify="left")
    table.add_column("rule")
    table.add_column("action")
    table.add_column("changes", justify="right")
    if verbose:
        table.add_column("nodes")
    for r in report.results:
        row = [r.rule_id, r.action, str(r.count)]
        if verbose:
            row.append(", ".join(r.node_names()) or "-")
        table.add_row(*row)
    console.print(table)
    console.print(summary_line(report), soft_wrap=True)
    if report.verify is not None:
        vt = Table(title="verify (ONNX Runtime, input vs output)", title_justify="left")
        with_ref = any("sqnr_vs_reference_db" in c for c in report.verify)
        cols = ["output", "shape", "max |diff|", "SQNR dB"]
        if with_ref:
            cols += ["in vs ref dB", "out vs ref dB"]
        for col in cols:
            vt.add_column(col, justify="left" if col in ("output", "shape") else "right")
        for c in report.verify:
            row = [c["name"], "x".join(map(str, c["shape"])), f"{c['max_abs_diff']:.6g}"]
            row.append(_db(c["sqnr_db"]))
            if with_ref:
                ref = c.get("sqnr_vs_reference_db", {})
                row += [_db(ref.get("input", "-")), _db(ref.get("output", "-"))]
            vt.add_row(*row)
        console.print(vt)
    if report.guard is not None:
        print_guard(console, report.guard)
    shown = report.warnings[:MAX_WARNINGS]
    for w in shown:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
    if len(report.warnings) > len(shown):
        more = len(report.warnings) - len(shown)
        err.print(f"warning: ... and {more} more (all in --report)", markup=False)
    if verbose:
        for r in report.results:
            for n in r.notes:
                console.print(f"note [{r.rule_id}]: {n}", markup=False)
    remaining = report.remaining_problems
    if remaining is not None:
        if remaining:
            by_id: dict[str, int] = {}
            for p in remaining:
                by_id[p.rule_id] = by_id.get(p.rule_id, 0) + 1
            counts = ", ".join(f"{k} x{v}" for k, v in by_id.items())
            console.print(
                f"remaining: {len(remaining)} problem(s) lint still finds ({counts})",
                markup=False,
                soft_wrap=True,
            )
            for p in remaining[:MAX_REMAINING]:
                console.print(f"  {p}", markup=False, soft_wrap=True)
            if len(remaining) > MAX_REMAINING:
                console.print(
                    f"  ... and {len(remaining) - MAX_REMAINING} more (all in --report)",
                    markup=False,
                )
        else:
            console.print("remaining: none (the result is lint-clean)", markup=False)
        for p in report.lint_warnings[:MAX_REMAINING]:
            console.print(f"lint warning {p}", markup=False, soft_wrap=True)
        if len(report.lint_warnings) > MAX_REMAINING:
            more = len(report.lint_warnings) - MAX_REMAINING
            console.print(f"lint warning ... and {more} more (all in --report)", markup=False)
    if target is not None:
        console.print(f"wrote {target}", markup=False)


def print_guard(console: Console, guard: dict) -> None:
    """The accuracy guard's table: each measured rule's leave-one-out effect, then the outcome."""
    title = (
        f"accuracy guard (output SQNR vs {guard['reference']}, {guard['samples']} sample(s); "
        "effect = with the rule - without it)"
    )
    gt = Table(title=title, title_justify="left")
    for col in ("rule", "changes", "SQNR without dB", "effect dB"):
        gt.add_column(col, justify="left" if col == "rule" else "right")
    for e in guard["effects"]:
        rule = e["rule_id"] + (" (required)" if e["required"] else "")
        gt.add_row(rule, str(e["changes"]), _db(e["sqnr_without_db"]), _db(e["effect_db"]))
    if guard["effects"]:
        console.print(gt)
    else:
        console.print(f"{title}: no non-exact rule changed anything", markup=False)
    line = (
        f"guard: input {_db(guard['sqnr_input_db'])} dB -> output {_db(guard['sqnr_output_db'])} dB"
    )
    if guard["max_loss_db"] is not None:
        line += f" (limit: lose at most {guard['max_loss_db']:g} dB)"
    console.print(line, markup=False, soft_wrap=True)
    for b in guard["backed_out"]:
        console.print(
            f"guard: backed out {b['rule_id']} -> {_db(b['sqnr_after_db'])} dB",
            markup=False,
            soft_wrap=True,
        )
    if guard["problems_after"] is not None:
        n = len(guard["problems_after"])
        console.print(f"guard: lint then finds {n} problem(s) (all in --report)", markup=False)
