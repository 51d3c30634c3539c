"""``qdqopt data``: data set helpers (``synth``: the synthetic shapes set)."""

from __future__ import annotations

import click

from qdq_optimizer.commands.cli_help import epilog


@click.group(name="data", epilog=epilog("qdqopt data synth out/shapes-val -n 64 --size 160"))
def command() -> None:
    """Data set helpers."""


@command.command(
    name="synth",
    epilog=epilog(
        "qdqopt data synth out/shapes-val -n 64 --size 160",
        "qdqopt data synth out/shapes-train -n 512 --size 160 --seed 1",
    ),
)
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--images", "-n", type=click.IntRange(min=1), default=64, show_default=True, help="Images."
)
@click.option(
    "--size",
    type=click.IntRange(min=32),
    default=256,
    show_default=True,
    help="Image width in pixels (heights vary from 75% to 100% of it).",
)
@click.option(
    "--classes",
    "nc",
    type=click.IntRange(1, 6),
    default=3,
    show_default=True,
    help="circle, rectangle, triangle, ring, frame, outline-triangle: the first N.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same set.")
def synth(out_dir: str, images: int, size: int, nc: int, seed: int) -> None:
    """Write a COCO-format set of coloured shapes to OUT_DIR (images/, annotations/instances.json)."""
    from trainer.data import synth_dataset

    out = synth_dataset(out_dir, images=images, size=size, nc=nc, seed=seed)
    click.echo(f"wrote {images} images ({nc} classes, seed {seed}) to {out}")
