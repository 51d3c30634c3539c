"""``qdqopt export``: a (quantized) checkpoint to ONNX Q/DQ, optionally optimized and linted."""

from __future__ import annotations

import click

from qdq_optimizer.commands.cli_help import epilog, rules_option

from ._common import checkpoint_options, img_size_option, resolve_img_size


@click.command(
    help="Export a (quantized) model to ONNX (opset 13, input 'images', output 'outputs').",
    epilog=epilog(
        "qdqopt export out/ptq.pt --save out/ptq.onnx --optimize --rules yolov7-tiny",
        "qdqopt export best.pt --save out/float.onnx --size 640 --dynamic",
    ),
)
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option(
    "--save", "save", required=True, type=click.Path(dir_okay=False), help="Output .onnx."
)
@img_size_option("--size")
@click.option("--dynamic", is_flag=True, help="Dynamic batch dimension.")
@click.option(
    "--optimize", is_flag=True, help="Run the optimizer on the export and lint the result."
)
@rules_option(default=None, help="Rule set for --optimize (e.g. yolov7, yolov7-tiny).")
@checkpoint_options
def command(
    weights, save, img_size, dynamic, optimize, rules, trust_checkpoint, yolov7_repo
) -> None:
    from trainer.quantization.pipeline import run_export

    size = resolve_img_size(weights, img_size)
    info = run_export(weights, save, size, dynamic, optimize, rules, trust_checkpoint, yolov7_repo)
    click.echo(
        f"exported {info['kind']} model ({size} px) to {save}: "
        f"{info['quantize_linear']} QuantizeLinear, "
        f"{info['nodes']} nodes"
        + (f"; optimized with rules {rules}, lint clean" if optimize else "")
    )
