"""``qdqopt dump IN``: the canonical, diff-friendly text form of a graph."""

from __future__ import annotations

from pathlib import Path

import click

from ..fileio import check_output_path, write_text_atomic
from .cli_help import epilog


@click.command(
    name="dump",
    epilog=epilog(
        "qdqopt dump out/model-opt.onnx -o out/model-opt.txt",
        "qdqopt dump model.onnx --names | less",
    ),
)
@click.argument("input_path", metavar="IN", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--precision",
    type=click.IntRange(1, 17),
    default=6,
    show_default=True,
    help="Significant digits of scales and small constants.",
)
@click.option("--names", is_flag=True, help="Append original node/tensor names as comments.")
@click.option(
    "-o",
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to a file instead of stdout.",
)
def command(input_path: Path, precision: int, names: bool, output_path: Path | None) -> None:
    """Print IN in topological order with renumbered names, scales and weight hashes.

    A graph that is not a valid DAG (a cycle, a missing initializer) is still dumped, with a
    warning on stderr: its order is then not canonical."""
    from ..dump import dump_model, structure_problems
    from ..model_io import load_model

    if output_path is not None:
        check_output_path(output_path, input_path)
    model = load_model(input_path)
    for problem in structure_problems(model):
        click.echo(f"warning: {input_path} is not a valid graph: {problem}", err=True)
    text = dump_model(model, precision=precision, names=names)
    if output_path is not None:
        write_text_atomic(output_path, text)
    else:
        click.echo(text, nl=False)
