"""``qdqopt sensitive``: per-layer quantization sensitivity (disable one layer at a time)."""

from __future__ import annotations

import click

from qdq_optimizer.commands.cli_help import epilog, rules_option

from ._common import (
    calib_batches_option,
    calib_method_option,
    checkpoint_options,
    data_option,
    img_size_option,
    no_progress_option,
    resolve_img_size,
    show_progress,
)


@click.command(
    help="Quantize every layer, then switch one top-level layer to float at a time: the layers "
    "whose float version recovers the most mAP are the first candidates for "
    "`quantize --ignore-policy`. Runs with the same --seed give the same numbers.",
    epilog=epilog(
        "qdqopt sensitive fixtures/checkpoints/yolov7-tiny-synth.pt --data out/shapes-val \\",
        "    --num-image 32 --summary out/sensitivity.json",
        "qdqopt sensitive best.pt --data coco/val2017.txt --layers 0-10 --no-progress > sens.log",
    ),
)
@click.argument("weights", type=click.Path(dir_okay=False))
@data_option
@click.option("--summary", type=click.Path(dir_okay=False), help="Write the full results as JSON.")
@click.option(
    "--num-image", type=click.IntRange(min=1), default=None, help="Evaluate on the first N images."
)
@click.option("--layers", default=None, help="Only these top-level layers, e.g. '0-3,7'.")
@click.option("--top", default=10, show_default=True, type=int, help="Rows in the table.")
@img_size_option()
@click.option(
    "--batch-size",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per calibration and evaluation batch.",
)
@calib_method_option
@calib_batches_option
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@rules_option(
    default="yolov7",
    help="Rule set whose scale groups are tied before calibration, as export --optimize will.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seeds the shuffled calibration batches and torch: same seed, same results.",
)
@no_progress_option
@checkpoint_options
def command(weights, data, summary, num_image, layers, top, img_size, no_progress, **kw) -> None:
    import json

    from rich.console import Console
    from rich.progress import Progress

    from qdq_optimizer.fileio import check_output_path, write_text_atomic
    from trainer.quantization.pipeline import parse_layers, run_sensitivity

    if summary:
        check_output_path(summary, weights)
    progress = show_progress(no_progress)
    size = resolve_img_size(weights, img_size)
    with Progress(console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("Layers", total=None)
        res = run_sensitivity(
            weights, data, img_size=size, num_image=num_image, layers=parse_layers(layers),
            progress=progress, on_layer=lambda n, total: bar.update(task, completed=n, total=total),
            **kw,
        )  # fmt: skip
    Console().print(sensitivity_table(res, size, kw["seed"], top))
    if summary:
        write_text_atomic(summary, json.dumps(res, indent=2) + "\n")


def sensitivity_table(res: dict, size: int, seed: int, top: int):
    """The ``top`` rows of a ``run_sensitivity`` result, most sensitive first."""
    from rich.table import Table

    base = res["quantized"]
    table = Table(
        title=f"Sensitivity at {size} px, seed {seed}; top {top}",
        caption=f"all quantized: mAP@0.5 {base['map50']:.4f}, mAP@0.5:0.95 {base['map']:.4f}",
    )
    for col in ("rank", "layer", "type", "mAP@0.5", "mAP@0.5:0.95", "gain"):
        table.add_column(col, justify="right" if col not in ("layer", "type") else "left")
    for i, row in enumerate(res["layers"][:top]):
        table.add_row(str(i + 1), row["name"], row["type"], f"{row['map50']:.4f}",
                      f"{row['map']:.4f}", f"{row['gain_map']:+.4f}")  # fmt: skip
    return table
