"""Atomic file output: write to a temporary file in the target folder, then rename.

An interrupted or failing run therefore leaves any previous output intact and no temp files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError


def check_output_path(out: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """Validate an output path before any work starts: folder exists, not equal to an input."""
    out_p = Path(out)
    parent = out_p.parent if str(out_p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"output folder does not exist: {parent}")
    if out_p.is_dir():
        raise UsageError(f"output path is a folder: {out_p}")
    for inp in inputs:
        try:
            same = out_p.exists() and os.path.samefile(out_p, inp)
        except OSError:
            same = False
        if same or out_p.resolve() == Path(inp).resolve():
            raise UsageError(f"output path must differ from the input: {out_p}")
    return out_p


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success only."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent or "."
    )
    os.close(fd)
    mask = os.umask(0)  # mkstemp creates 0600; give outputs the usual umask-based mode
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        os.replace(tmp_p, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_p.unlink()
        raise


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))
