"""The ``qdqopt`` command line: a thin shell over the qdq_optimizer and trainer libraries.

Each subcommand lives in its own module under ``qdq_optimizer/commands/`` or ``trainer/commands/``
(Polygraphy style) and is imported only when it runs, so ``qdqopt inspect`` never imports torch.
Every failure becomes a one-line ``qdqopt: error:`` message and a documented exit code: 0 ok,
1 a check found problems, 2 bad usage or unreadable input (usage errors and a missing optional
extra included), 3 internal error (``--debug`` prints the traceback). The console script, ``python
-m qdq_optimizer`` and the checkout's ``cli.py`` shim all call :func:`main`.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from .commands.cli_help import epilog
from .errors import EXIT_BAD_INPUT, EXIT_INTERNAL, MissingDependencyError, QdqoptError

# name -> (module, one-line help). Modules expose a click command called ``command``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "optimize": ("qdq_optimizer.commands.optimize", "Rewrite Q/DQ placement by a rule set."),
    "lint": ("qdq_optimizer.commands.lint", "List Q/DQ placement problems (exit 1 if any)."),
    "dump": ("qdq_optimizer.commands.dump", "Canonical, diff-friendly text form of a graph."),
    "diff": ("qdq_optimizer.commands.diff", "Q/DQ-aware difference of two graphs (exit 1 if any)."),
    "inspect": ("qdq_optimizer.commands.inspect", "Verify layer precisions of a TensorRT engine."),
    "build": ("qdq_optimizer.commands.build", "Build a TensorRT engine and its layer report."),
    "train": ("trainer.commands.train", "Train the built-in detector (float baseline)."),
    "quantize": ("trainer.commands.quantize", "Insert Q/DQ, calibrate (PTQ) and fine-tune (QAT)."),
    "export": ("trainer.commands.export", "Export a (quantized) model to ONNX."),
    "sensitive": ("trainer.commands.sensitive", "Per-layer quantization sensitivity analysis."),
    "eval": ("trainer.commands.evaluate", "COCO mAP of a .pt or .onnx model."),
    "data": ("trainer.commands.data", "Data set helpers (synthetic shapes set)."),
}


MAX_MESSAGE = 1000  # characters of one error line (room for a trtexec hint with long paths)

# top-level module of an optional dependency -> the extra that installs it
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "train",
    "pytorch_quantization": "train",
    "pycocotools": "train",
    "PIL": "train",
    "scipy": "train",
    "onnxscript": "train",
    "tensorrt": "trt",
}
_DISTRIBUTION_OF_MODULE = {"PIL": "pillow", "pytorch_quantization": "pytorch-quantization"}
# click >= 8.2 raises this for a bare group (`qdqopt`, `qdqopt data`); 8.1 prints help and exits
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, help_text = SUBCOMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or "a module"
            return _unavailable(name, help_text, f"needs {missing} (install the matching extra)")
        return module.command


def _unavailable(name: str, help_text: str, reason: str) -> click.Command:
    @click.command(
        name=name,
        help=f"{help_text} [unavailable: {reason}]",
        context_settings={"ignore_unknown_options": True},
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        raise QdqoptError(f"'{name}' is unavailable: {reason}")

    return cmd


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=epilog(
        "qdqopt optimize model.onnx out/model-opt.onnx --rules yolov7",
        "qdqopt lint out/model-opt.onnx --rules yolov7",
        "qdqopt optimize --help",
        check="a check found problems (lint, diff, inspect --expect)",
    ),
)
@click.version_option(package_name="qdqopt")
@click.option("--debug", is_flag=True, help="Print the full traceback on internal errors.")
@click.pass_context
def qdqopt(ctx: click.Context, debug: bool) -> None:
    """Make quantized (Q/DQ) ONNX models run fully in INT8 on NVIDIA TensorRT."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (CI cancel, timeout) unwinds like Ctrl-C, so atomic writes remove their temp files."""
    raise KeyboardInterrupt("terminated")


def main(argv: list[str] | None = None) -> int:
    """Entry point: handle SIGTERM like SIGINT for the run, map every outcome onto an exit code."""
    import signal
    import threading

    installed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if installed else None
    try:
        return _main(argv)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every outcome onto an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accept --debug anywhere on the line, not only before the subcommand
        args = ["--debug"] + [a for a in args if a != "--debug"]
    try:
        qdqopt.main(args=args, prog_name="qdqopt", standalone_mode=False)
        return 0
    except QdqoptError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"qdqopt: error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except _NO_ARGS_IS_HELP as exc:  # bare `qdqopt` or `qdqopt data`: the help
        exc.show()
        return EXIT_BAD_INPUT
    except click.ClickException as exc:
        click.echo(f"qdqopt: error: {_usage_line(exc)}", err=True)
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as exc:
        root = (exc.name or "").partition(".")[0]
        if root not in EXTRA_OF_MODULE:
            return _internal(exc, debug)
        if debug:
            traceback.print_exc()
        error = _missing_extra(root, _subcommand(args))
        click.echo(f"qdqopt: error: {error}", err=True)
        return error.exit_code
    except click.Abort:
        click.echo("qdqopt: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("qdqopt: interrupted", err=True)
        return 130
    except RecursionError:
        if debug:
            traceback.print_exc()
        click.echo("qdqopt: internal error: recursion limit hit (rerun with --debug)", err=True)
        return EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        return _internal(exc, debug)


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    click.echo(
        f"qdqopt: internal error: {type(exc).__name__}: {_one_line(exc)} "
        "(rerun with --debug for the traceback)",
        err=True,
    )
    return EXIT_INTERNAL


def _subcommand(args: list[str]) -> str | None:
    return next((a for a in args if a in SUBCOMMANDS), None)


def _missing_extra(module: str, command: str | None) -> MissingDependencyError:
    """The one-line error for an optional dependency that is not installed."""
    extra = EXTRA_OF_MODULE[module]
    who = f"'qdqopt {command}'" if command else "this command"
    name = _DISTRIBUTION_OF_MODULE.get(module, module)
    return MissingDependencyError(
        f"{who} needs {name}, which is not installed: install qdqopt[{extra}] "
        f"(pip install 'qdqopt[{extra}]')"
    )


def _usage_line(exc: click.ClickException) -> str:
    """click's usage error as one line, pointing at the command's --help."""
    text = _one_line(click.ClickException(exc.format_message())).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and isinstance(exc, click.UsageError):
        text += f" (see '{ctx.command_path} --help')"
    return text


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:MAX_MESSAGE] + ("..." if len(text) > MAX_MESSAGE else "")


if __name__ == "__main__":
    sys.exit(main())
