"""``qdqopt diff A B``: what differs between two graphs, Q/DQ-aware; exit 1 when they differ."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CheckFailed
from .cli_help import epilog


@click.command(
    name="diff",
    epilog=epilog(
        "qdqopt diff model.onnx out/model-opt.onnx",
        "qdqopt diff a.onnx b.onnx --format json --precision 4",
        check="the models differ",
    ),
)
@click.argument("a_path", metavar="A", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("b_path", metavar="B", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--precision",
    type=click.IntRange(1, 17),
    default=6,
    show_default=True,
    help="Significant digits used to compare scales.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output as text or JSON.",
)
def command(a_path: Path, b_path: Path, precision: int, fmt: str) -> None:
    """Summarise Q/DQ pairs added/removed/moved, scales changed, other nodes added/removed."""
    from ..diff import diff_models
    from ..model_io import load_model

    d = diff_models(load_model(a_path), load_model(b_path), precision=precision)
    if fmt == "json":
        payload = {k: getattr(d, k) for k, _ in d.SECTIONS}
        click.echo(json.dumps({"differ": d.differ, "note": d.note, **payload}, indent=2))
    else:
        click.echo(d.to_text(), nl=False)
    if d.differ:
        counts = ", ".join(f"{n} {k}" for k, n in d.counts().items() if n)
        raise CheckFailed(f"models differ ({counts})")
