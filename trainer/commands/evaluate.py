"""``qdqopt eval``: COCO mAP of a .pt checkpoint or an .onnx model (run in ONNX Runtime)."""

from __future__ import annotations

import click

from qdq_optimizer.commands.cli_help import epilog


@click.command(
    name="eval",
    epilog=epilog(
        "qdqopt eval fixtures/checkpoints/yolov7-tiny-synth.pt --data out/shapes-val",
        "qdqopt eval out/ptq.onnx --data out/shapes-val --json   (no torch needed for .onnx)",
    ),
)
@click.argument("model", type=click.Path())
@click.option(
    "--data", required=True, type=click.Path(), help="COCO folder/json or yolov7 txt list."
)
@click.option("--conf", type=float, default=0.001, show_default=True, help="Score threshold.")
@click.option("--iou", type=float, default=0.65, show_default=True, help="NMS IoU threshold.")
@click.option(
    "--img-size",
    type=int,
    default=None,
    help="Input size (default: the checkpoint's, else 640; fixed-size ONNX models use theirs).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Images a batch.",
)
@click.option(
    "--device", default="cpu", show_default=True, help="cpu or cuda[:N] (.pt models; .onnx: CPU)."
)
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow full pickles (official .pt): a pickle can execute code.",
)
@click.option(
    "--yolov7-repo",
    type=click.Path(exists=True, file_okay=False),
    help="Unpickle an official .pt with this yolov7 checkout importable (needs --trust-checkpoint).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(
    model, data, conf, iou, img_size, batch_size, device, trust_checkpoint, yolov7_repo, as_json
) -> None:
    """Evaluate MODEL (.pt or .onnx) on a data set: mAP@0.5 and mAP@0.5:0.95 (pycocotools)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from trainer.evaluate import evaluate, stored_img_size

    size = img_size or stored_img_size(model) or 640
    res = evaluate(
        model,
        data,
        size,
        conf=conf,
        iou=iou,
        batch_size=batch_size,
        device=device,
        trust_checkpoint=trust_checkpoint,
        yolov7_repo=yolov7_repo,
    )
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    from pathlib import Path

    table = Table()
    for col in ("model", "images", "size", "mAP@0.5", "mAP@0.5:0.95", "seconds"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row(
        Path(model).name, str(res["images"]), str(size), f"{res['map50']:.4f}",
        f"{res['map']:.4f}", f"{res['seconds']}",
    )  # fmt: skip
    Console().print(table)
