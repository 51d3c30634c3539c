"""``qdqopt sensitive``: per-layer quantization sensitivity (disable one layer at a time)."""

from __future__ import annotations

import click

from ._common import calib_batches_option, calib_method_option, data_option


@click.command(help="Quantize every layer, then switch one top-level layer to float at a time.")
@click.argument("weights", type=click.Path(dir_okay=False))
@data_option
@click.option("--summary", type=click.Path(dir_okay=False), help="Write the full results as JSON.")
@click.option("--num-image", type=int, default=None, help="Evaluate on the first N images only.")
@click.option("--layers", default=None, help="Only these top-level layers, e.g. '0-3,7'.")
@click.option("--top", default=10, show_default=True, type=int, help="Rows in the table.")
@click.option("--img-size", default=640, show_default=True, type=int)
@click.option("--batch-size", default=10, show_default=True, type=int)
@calib_method_option
@calib_batches_option
@click.option("--device", default="cpu", show_default=True)
@click.option("--rules", default="yolov7", show_default=True)
@click.option("--trust-checkpoint", is_flag=True)
@click.option("--yolov7-repo", type=click.Path(file_okay=False))
def command(weights, data, summary, num_image, layers, top, **kw) -> None:
    import json

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from qdq_optimizer.errors import UsageError
    from qdq_optimizer.fileio import check_output_path, write_text_atomic
    from trainer.quantization.pipeline import parse_layers, run_sensitivity

    if summary:
        check_output_path(summary, weights)
    if num_image is not None and num_image < 1:
        raise UsageError("--num-image must be >= 1")
    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("Layers", total=None)
        res = run_sensitivity(
            weights, data, num_image=num_image, layers=parse_layers(layers),
            on_layer=lambda n, total: bar.update(task, completed=n, total=total), **kw,
        )  # fmt: skip
    base = res["quantized"]
    table = Table(title=f"Sensitivity (all quantized: mAP@0.5:0.95 {base['map']:.4f}); top {top}")
    for col in ("rank", "layer", "type", "mAP@0.5", "mAP@0.5:0.95", "gain"):
        table.add_column(col, justify="right" if col not in ("layer", "type") else "left")
    for i, row in enumerate(res["layers"][:top]):
        table.add_row(str(i + 1), row["name"], row["type"], f"{row['map50']:.4f}",
                      f"{row['map']:.4f}", f"{row['gain_map']:+.4f}")  # fmt: skip
    Console().print(table)
    if summary:
        write_text_atomic(summary, json.dumps(res, indent=2) + "\n")
