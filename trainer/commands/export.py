"""``qdqopt export``: a (quantized) checkpoint to ONNX Q/DQ, optionally optimized and linted."""

from __future__ import annotations

import click

from ._common import checkpoint_options


@click.command(
    help="Export a (quantized) model to ONNX (opset 13, input 'images', output 'outputs')."
)
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option(
    "--save", "save", required=True, type=click.Path(dir_okay=False), help="Output .onnx."
)
@click.option("--size", default=640, show_default=True, type=int, help="Input height and width.")
@click.option("--dynamic", is_flag=True, help="Dynamic batch dimension.")
@click.option(
    "--optimize", is_flag=True, help="Run the optimizer on the export and lint the result."
)
@click.option("--rules", default=None, help="Rule set for --optimize (e.g. yolov7, yolov7-tiny).")
@checkpoint_options
def command(weights, save, size, dynamic, optimize, rules, trust_checkpoint, yolov7_repo) -> None:
    from trainer.quantization.pipeline import run_export

    info = run_export(weights, save, size, dynamic, optimize, rules, trust_checkpoint, yolov7_repo)
    click.echo(
        f"exported {info['kind']} model to {save}: {info['quantize_linear']} QuantizeLinear, "
        f"{info['nodes']} nodes"
        + (f"; optimized with rules {rules}, lint clean" if optimize else "")
    )
