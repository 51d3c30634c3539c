"""``qdqopt build``: ONNX -> TensorRT engine plus its detailed layer report (GPU + tensorrt)."""

from __future__ import annotations

import click

from ..engines.build import build_engine
from .cli_help import epilog


@click.command(
    name="build",
    epilog=epilog(
        "qdqopt build out/model-opt.onnx --engine out/model-opt.plan",
        "qdqopt build model.onnx --engine model.plan --report model.graph.json --fp16",
        ok="engine and report written (exit 2 also when tensorrt or a GPU is missing)",
    ),
)
@click.argument("onnx_model", type=click.Path(dir_okay=False))
@click.option(
    "--engine",
    "engine",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the serialized engine (.plan).",
)
@click.option(
    "--report",
    "report",
    type=click.Path(dir_okay=False),
    help="Layer report JSON [default: ENGINE stem + .graph.json].",
)
@click.option("--fp16", is_flag=True, help="Let layers left in float run in FP16 (TensorRT < 11).")
def command(onnx_model: str, engine: str, report: str | None, fp16: bool) -> None:
    """Build ONNX_MODEL with the TensorRT Python API at detailed profiling verbosity and write
    the layer report beside the engine, ready for `qdqopt inspect`."""
    out = build_engine(onnx_model, engine, report_path=report, fp16=fp16)
    click.echo(f"wrote {out.engine_path} and {out.report_path} ({out.layers} layers)")
    click.echo(f"next: qdqopt inspect {out.report_path} --expect int8")
