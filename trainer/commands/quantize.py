"""``qdqopt quantize``: Q/DQ insertion, PTQ calibration and QAT fine-tuning (the seed's qat.py)."""

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

_COMMON_HELP = "Under torchrun with several GPUs each rank trains with DistributedDataParallel."


@click.command(
    help=f"Insert Q/DQ, calibrate (PTQ) and fine-tune (QAT). {_COMMON_HELP}",
    epilog=epilog(
        "qdqopt quantize fixtures/checkpoints/yolov7-tiny-synth.pt --data out/shapes-val \\",
        "    --ptq out/ptq.pt --calib-batches 4 --rules yolov7-tiny",
        "qdqopt quantize best.pt --data train.txt --val val.txt --qat out/qat.pt --epochs 10",
    ),
)
@click.argument("weights", type=click.Path(dir_okay=False))
@data_option
@click.option(
    "--val", type=click.Path(), help="Evaluation set [--data]; --data then only calibrates/trains."
)
@click.option("--ptq", "ptq", type=click.Path(dir_okay=False), help="Save the PTQ model here.")
@click.option(
    "--qat", "qat", type=click.Path(dir_okay=False), help="Run QAT; save the best model here."
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False),
    help="Results JSON [summary.json beside --qat/--ptq].",
)
@click.option("--eval-origin", is_flag=True, help="Evaluate the float model first.")
@click.option("--eval-ptq", is_flag=True, help="Evaluate the PTQ model.")
@click.option(
    "--ignore-policy", multiple=True, help="Regex on module paths to keep float (repeatable)."
)
@click.option(
    "--supervision-stride",
    default=1,
    show_default=True,
    type=int,
    help="QAT distils every N-th top-level layer's output from the float model.",
)
@click.option("--iters", default=200, show_default=True, type=int, help="QAT steps per epoch.")
@click.option("--epochs", default=10, show_default=True, type=int, help="QAT epochs.")
@calib_method_option
@calib_batches_option
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@rules_option(
    default="yolov7",
    help="Rule set export --optimize will apply: the scale groups it unifies are tied before "
    "calibration.",
)
@img_size_option()
@click.option(
    "--batch-size", default=10, show_default=True, type=int, help="Images per calibration/QAT step."
)
@click.option("--nproc", default=1, show_default=True, type=int, help="CPU processes (gloo DDP).")
@checkpoint_options
@no_progress_option
def command(weights: str, **kw) -> None:
    from rich.console import Console

    from trainer.quantization.pipeline import QuantizeOptions, run_quantize

    console = Console(stderr=True)
    kw["ignore_policy"] = list(kw.pop("ignore_policy"))
    kw["progress"] = show_progress(kw.pop("no_progress"))
    kw["img_size"] = resolve_img_size(weights, kw["img_size"])
    opts = QuantizeOptions(**kw)
    summary = run_quantize(weights, opts, log=console.print)
    _print_table(summary)


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    res = summary["results"]
    rows = []
    if "origin" in res:
        rows.append(("float", res["origin"]))
    if "ptq" in res:
        rows.append(("PTQ", res["ptq"]))
    best = res.get("qat_best", {}).get("epoch")
    for rec in res.get("qat_epochs", []):
        if "map" in rec:
            rows.append(
                (f"QAT epoch {rec['epoch']}" + (" (best)" if rec["epoch"] == best else ""), rec)
            )
    if not rows:
        return
    table = Table(title="mAP (PyTorch)")
    table.add_column("model")
    table.add_column("mAP@0.5", justify="right")
    table.add_column("mAP@0.5:0.95", justify="right")
    for name, r in rows:
        table.add_row(name, f"{r['map50']:.4f}", f"{r['map']:.4f}")
    Console().print(table)
