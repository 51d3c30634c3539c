"""``qdqopt inspect``: did my engine run in INT8, and if not, where and why."""

from __future__ import annotations

import io
import os
import sys

import click
from rich.console import Console

from ..engines import attach_profile, check, load_profile, load_report, summarize
from ..engines.compare import compare
from ..engines.onnx_map import map_onnx
from ..engines.render import (
    FORMATS,
    render_compare_markdown,
    render_compare_table,
    render_dot,
    render_json,
    render_markdown,
    render_svg,
    render_table,
)
from ..errors import CheckFailed, UsageError
from ..fileio import check_output_path, write_text_atomic
from .cli_help import epilog


def _load(path: str, profile: str | None, fold: bool):
    report = load_report(path, fold_noops=fold)
    if profile:
        attach_profile(report, load_profile(profile))
    return report


@click.command(
    name="inspect",
    epilog=epilog(
        "qdqopt inspect model.graph.json --expect int8 --onnx model.onnx",
        "qdqopt inspect model.plan --profile model.profile.json --summary-only",
        "qdqopt inspect opt.graph.json --compare naive.graph.json --format markdown",
        check="--expect int8 found non-INT8 layers",
    ),
)
@click.argument("report", type=click.Path(dir_okay=False))
@click.option(
    "--profile",
    "profile",
    type=click.Path(dir_okay=False),
    help="trtexec --exportProfile JSON: adds time per layer.",
)
@click.option(
    "--compare",
    "compare_with",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Another engine report to put side by side (repeatable).",
)
@click.option(
    "--compare-profile",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Profile for each --compare report, in the same order.",
)
@click.option(
    "--onnx",
    "onnx_model",
    type=click.Path(dir_okay=False),
    help="The ONNX model the engine was built from: map layers back to nodes.",
)
@click.option(
    "--expect",
    type=click.Choice(["int8"], case_sensitive=False),
    help="Exit 1 unless the engine is INT8 end to end.",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="REGEX",
    help="Layers (name or ONNX node) allowed to stay non-INT8 (repeatable).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table (rich), json (stable schema), markdown, dot or svg (needs graphviz).",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout."
)
@click.option(
    "--summary-only", is_flag=True, help="Leave out the per-layer table (table/markdown)."
)
@click.option(
    "--keep-noops", is_flag=True, help="Keep NoOp layers (TREx folds them; so do we by default)."
)
def command(
    report,
    profile,
    compare_with,
    compare_profile,
    onnx_model,
    expect,
    allow,
    fmt,
    output,
    summary_only,
    keep_noops,
):
    """Read a TensorRT engine layer report (trtexec --exportLayerInfo JSON or a .plan)
    and show per-layer precision, reformats, time and an INT8 verdict."""
    if len(compare_profile) > len(compare_with):
        raise UsageError("--compare-profile given more often than --compare")
    if allow and not expect:
        raise UsageError("--allow only makes sense with --expect")
    inputs = [report, *compare_with, *(p for p in (profile, onnx_model) if p), *compare_profile]
    if output:
        check_output_path(output, *inputs)
    rep = _load(report, profile, not keep_noops)
    summary = summarize(rep)
    violations = check(rep, expect, allow) if expect else None
    onnx = map_onnx(rep, onnx_model, summary) if onnx_model else None

    if compare_with:
        if fmt in ("dot", "svg"):
            raise UsageError("--compare supports --format table, json or markdown")
        items = [(rep, summary)]
        for i, other in enumerate(compare_with):
            o = _load(
                other, compare_profile[i] if i < len(compare_profile) else None, not keep_noops
            )
            items.append((o, summarize(o)))
        comp = compare(items)
        if fmt == "json":
            import json

            text = (
                json.dumps(
                    {
                        "comparison": comp.to_json(),
                        "reports": [r.source for r, _ in items],
                        "summaries": [s.to_json() for _, s in items],
                    },
                    indent=2,
                )
                + "\n"
            )
        elif fmt == "markdown":
            text = render_compare_markdown(comp)
        else:
            text = _table(lambda c: render_compare_table(c, comp), output)
    elif fmt == "json":
        text = render_json(rep, summary, onnx, violations)
    elif fmt == "markdown":
        text = render_markdown(rep, summary, onnx, violations, show_layers=not summary_only)
    elif fmt == "dot":
        text = render_dot(rep)
    elif fmt == "svg":
        text = render_svg(rep)
    else:
        text = _table(
            lambda c: render_table(c, rep, summary, onnx, violations, show_layers=not summary_only),
            output,
        )
    if output:
        write_text_atomic(output, text)
    elif text:
        sys.stdout.write(text)
        sys.stdout.flush()
    if violations:
        n = len(violations)
        first = "; ".join(str(v) for v in violations[:3])
        raise CheckFailed(
            f"{rep.source}: not INT8 end to end ({n} violation(s)): {first}"
            + (f"; ... {n - 3} more" if n > 3 else "")
        )


def _table(draw, output: str | None) -> str:
    """Render with rich: straight to the terminal, or to plain text for a file / pipe."""
    if output is None and sys.stdout.isatty():
        draw(Console())
        return ""
    buf = io.StringIO()
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 160
    draw(Console(file=buf, width=width, color_system=None, force_terminal=False))
    return buf.getvalue()
