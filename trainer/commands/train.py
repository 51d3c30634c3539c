"""``qdqopt train``: float baseline training of the built-in detector."""

from __future__ import annotations

import click

from qdq_optimizer.commands.cli_help import epilog


@click.command(
    name="train",
    epilog=epilog(
        "qdqopt data synth out/shapes-train -n 256 --size 160",
        "qdqopt train --data out/shapes-train --val out/shapes-val --save out/tiny.pt --epochs 30",
    ),
)
@click.option(
    "--data", required=True, type=click.Path(), help="Training set (COCO folder/json or txt list)."
)
@click.option(
    "--val", "val_data", type=click.Path(), help="Validation set; the best epoch by mAP is kept."
)
@click.option(
    "--save", "out", required=True, type=click.Path(dir_okay=False), help="Output checkpoint (.pt)."
)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(["yolov7-tiny", "yolov7"]),
    default="yolov7-tiny",
    show_default=True,
    help="Built-in architecture.",
)
@click.option("--width", type=float, default=0.25, show_default=True, help="Channel multiplier.")
@click.option("--weights", type=click.Path(), help="Start from this checkpoint instead of scratch.")
@click.option(
    "--img-size",
    type=int,
    default=160,
    show_default=True,
    help="Input height and width (a multiple of 32); saved in the checkpoint.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True, help="Epochs.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Images a step."
)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Learning rate.")
@click.option(
    "--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Loader processes."
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seeds weights, shuffling and augmentation.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def command(
    data,
    val_data,
    out,
    model_name,
    width,
    weights,
    img_size,
    epochs,
    batch_size,
    lr,
    workers,
    device,
    seed,
    no_progress,
) -> None:
    """Train the built-in detector on a data set and save the best weights-only checkpoint."""
    from trainer.train import train

    summary = train(
        data,
        out,
        model_name=model_name,
        width=width,
        img_size=img_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_data=val_data,
        weights=weights,
        workers=workers,
        device=device,
        seed=seed,
        progress=not no_progress,
        log=lambda s: click.echo(s, err=True),
    )
    best = summary["best"] or {}
    text = f"saved {summary['out']} (epoch {best.get('epoch')}, {summary['seconds']} s"
    if "map" in best:
        text += f", val mAP@0.5 {best['map50']:.4f}, mAP@0.5:0.95 {best['map']:.4f}"
    click.echo(text + ")")
