"""Click options that several trainer commands declare identically (one place to change them)."""

from __future__ import annotations

import sys

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
    help="How each activation's range is chosen from its calibration histogram.",
)
calib_batches_option = click.option(
    "--calib-batches",
    default=25,
    show_default=True,
    type=click.IntRange(min=1),
    help="Batches of --data that calibrate.",
)
no_progress_option = click.option(
    "--no-progress", is_flag=True, help="No progress bars (never drawn when stderr is not a TTY)."
)

DEFAULT_IMG_SIZE = 640  # when the checkpoint records no size (e.g. an official .pt)


def img_size_option(*names: str):
    """``--img-size`` (or NAMES) defaulting to the size the checkpoint records."""
    return click.option(
        *(names or ("--img-size",)),
        "img_size",
        type=click.IntRange(min=32),
        default=None,
        help=f"Input height and width [default: the checkpoint's, else {DEFAULT_IMG_SIZE}].",
    )


def resolve_img_size(weights: str, img_size: int | None) -> int:
    """The size given, else the one the checkpoint records, else 640."""
    if img_size is not None:
        return img_size
    from trainer.evaluate import stored_img_size

    return stored_img_size(weights) or DEFAULT_IMG_SIZE


def show_progress(no_progress: bool) -> bool:
    """Progress bars only for a person watching: not with --no-progress, not into a log or pipe."""
    return not no_progress and sys.stderr.isatty()


def checkpoint_options(f):
    """--trust-checkpoint and --yolov7-repo, with help (quantize, export, sensitive)."""
    f = click.option(
        "--yolov7-repo",
        type=click.Path(exists=True, file_okay=False),
        help="Unpickle an official .pt with this yolov7 checkout importable "
        "(needs --trust-checkpoint).",
    )(f)
    return click.option(
        "--trust-checkpoint",
        is_flag=True,
        help="Allow full pickles (official .pt); a pickle can execute code, so only for files "
        "you trust.",
    )(f)
