"""Click options that several trainer commands declare identically (one place to change them)."""

from __future__ import annotations

import click

# quantize, sensitive
data_option = click.option(
    "--data", required=True, type=click.Path(), help="COCO folder/JSON or yolov7 txt list."
)
calib_method_option = click.option(
    "--calib-method",
    default="mse",
    show_default=True,
    type=click.Choice(["mse", "percentile", "entropy", "max"]),
)
calib_batches_option = click.option("--calib-batches", default=25, show_default=True, type=int)


def checkpoint_options(f):
    """--trust-checkpoint and --yolov7-repo, with help (quantize, export)."""
    f = click.option(
        "--yolov7-repo", type=click.Path(file_okay=False), help="Official yolov7 checkout."
    )(f)
    return click.option(
        "--trust-checkpoint", is_flag=True, help="Allow the restricted unpickler for official .pt."
    )(f)
