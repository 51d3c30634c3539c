"""``qdqopt lint IN --rules NAME``: what the rule set's rules find (what they would change, and
what they cannot fix) without rewriting, plus TensorRT's placement checks that no rule of the set
owns, so each problem is reported once; exit 1 when there is any problem (a CI gate). The checks'
warnings (``trt-attention``) are printed too but never change the exit status. IN is never
modified."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CheckFailed
from .cli_help import epilog, ignore_options, rules_option


@click.command(
    name="lint",
    epilog=epilog(
        "qdqopt lint out/model-opt.onnx --rules yolov7",
        "qdqopt lint model.onnx --rules tensorrt --format json > problems.json",
        check="problems found (a CI gate)",
    ),
)
@click.argument("input_path", metavar="IN", type=click.Path(dir_okay=False, path_type=Path))
@rules_option()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Problems as text lines or one JSON document.",
)
@ignore_options
@click.option(
    "--checks",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="TensorRT placement checks; auto: when the rule set extends tensorrt.",
)
def command(
    input_path: Path,
    rules: str,
    fmt: str,
    ignore: tuple[str, ...],
    allow_asymmetric: bool,
    checks: str,
) -> None:
    """List Q/DQ placement problems of IN; exit 1 if there are any."""
    from ..api import lint_report

    report = lint_report(
        input_path,
        rules,
        ignore=ignore,
        allow_asymmetric=allow_asymmetric,
        checks={"auto": None, "on": True, "off": False}[checks],
    )
    problems = report.problems
    if fmt == "json":
        payload = {
            "model": str(input_path),
            "rules": report.rule_chain,
            "problems": [p.to_dict() for p in problems],
            "lint_warnings": [p.to_dict() for p in report.lint_warnings],
            "warnings": report.warnings,
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        for p in report.lint_warnings:
            click.echo(f"warning {p}")
        for w in report.warnings:
            click.echo(f"warning: {w}", err=True)
        chain = " > ".join(report.rule_chain)
        counted = f"{len(problems)} problem(s)"
        if report.lint_warnings:
            counted += f", {len(report.lint_warnings)} warning(s)"
        click.echo(f"{counted} in {input_path} (rules: {chain})")
    if problems:
        raise CheckFailed(f"{len(problems)} Q/DQ placement problem(s) in {input_path}")
