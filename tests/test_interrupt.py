"""Interrupted runs (SIGINT, SIGTERM, a failure mid-write) keep the previous output, no temp files.

A child process runs ``cli.main`` with a hook that announces the write on stderr and then stalls
inside it; the test signals the child at that moment. The hooked command is either a tiny
``load_model``/``save_model`` command registered for the test, or the real ``optimize``.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cli

try:
    from hardening_util import qdq_conv_model
except ImportError:  # tests/ imported as a package
    from tests.hardening_util import qdq_conv_model

ROOT = Path(__file__).resolve().parents[1]

SLOW_CMD = """
import click
from qdq_optimizer import model_io
from qdq_optimizer.fileio import check_output_path


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--external", is_flag=True)
def command(src, dst, external):
    model = model_io.load_model(src)
    check_output_path(dst, src)
    model_io.save_model(model, dst, external_data=external)
"""

DRIVER = """
import signal, sys, time
sys.path.insert(0, {tmp!r})
signal.signal(signal.SIGINT, signal.default_int_handler)
import cli
from qdq_optimizer import model_io

MODE = {mode!r}
cli.SUBCOMMANDS["slowsave"] = ("slowcmd", "test-only: load and save slowly")
orig_ext = model_io._externalize
orig_write = model_io.Path.write_bytes


def stall():
    if MODE == "fail":
        raise RuntimeError("disk on fire")
    sys.stderr.write("WRITING\\n")
    sys.stderr.flush()
    time.sleep(60)


def slow_ext(*a, **k):
    offset = orig_ext(*a, **k)
    stall()
    return offset


def slow_write(self, data):
    n = orig_write(self, data[: len(data) // 2])  # half a file is on disk when we stall
    stall()
    return orig_write(self, data)


model_io._externalize = slow_ext
model_io.Path.write_bytes = slow_write
sys.exit(cli.main(sys.argv[1:]))
"""


def _has_optimize() -> bool:
    return importlib.util.find_spec(cli.SUBCOMMANDS["optimize"][0]) is not None


def _run_and_interrupt(tmp_path: Path, argv: list[str], sig: int | None) -> tuple[int, str]:
    mode = "fail" if sig is None else "stall"
    (tmp_path / "slowcmd.py").write_text(SLOW_CMD)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tmp=str(tmp_path), mode=mode))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(driver), *argv],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    err = b""
    try:
        if sig is not None:
            deadline = time.monotonic() + 60
            while b"WRITING" not in err:
                assert time.monotonic() < deadline, f"child never reached the write: {err!r}"
                ready, _, _ = select.select([proc.stderr], [], [], 1)
                if ready:
                    chunk = os.read(proc.stderr.fileno(), 4096)
                    assert chunk, f"child exited early: {err!r}"
                    err += chunk
            proc.send_signal(sig)
        _, rest = proc.communicate(timeout=60)
        err += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode(errors="replace")


CASES = [
    pytest.param(signal.SIGTERM, False, id="sigterm"),
    pytest.param(signal.SIGINT, False, id="sigint"),
    pytest.param(signal.SIGTERM, True, id="sigterm-external-data"),
    pytest.param(None, False, id="failure"),
    pytest.param(None, True, id="failure-external-data"),
]


@pytest.mark.parametrize(("sig", "external"), CASES)
def test_interrupted_save_keeps_previous_output(tmp_path: Path, sig, external: bool) -> None:
    src = tmp_path / "in.onnx"
    src.write_bytes(qdq_conv_model(channels=64).SerializeToString())
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    (tmp_path / "out.onnx.data").write_bytes(b"previous data")
    argv = ["slowsave", str(src), str(out)] + (["--external"] if external else [])
    rc, err = _run_and_interrupt(tmp_path, argv, sig)
    if sig is None:
        assert rc == 3 and "disk on fire" in err and "--debug" in err
    else:
        assert rc == 130 and ("interrupted" in err or "aborted" in err)
    assert "Traceback" not in err
    assert out.read_bytes() == b"previous output"
    assert (tmp_path / "out.onnx.data").read_bytes() == b"previous data"
    left = {p.name for p in tmp_path.iterdir()} - {"__pycache__"}
    assert left == {"driver.py", "in.onnx", "out.onnx", "out.onnx.data", "slowcmd.py"}, left


@pytest.mark.skipif(not _has_optimize(), reason="optimize command not written yet")
@pytest.mark.parametrize("sig", [signal.SIGTERM, None], ids=["sigterm", "failure"])
def test_interrupted_optimize_keeps_previous_output(tmp_path: Path, sig) -> None:
    src = tmp_path / "in.onnx"
    src.write_bytes(qdq_conv_model().SerializeToString())
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")
    argv = ["optimize", str(src), str(out), "--rules", "cleanup"]
    rc, err = _run_and_interrupt(tmp_path, argv, sig)
    assert rc == (3 if sig is None else 130), err
    assert "Traceback" not in err
    assert out.read_bytes() == b"previous output"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
