"""Every command that takes an input leaves it byte-for-byte unchanged, and writes nothing beside it.

Inputs live in their own folder (with an external-data model among them); outputs go elsewhere.
After each command the input folder must hold exactly the same files with the same bytes and
modification times, whatever the exit code.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import onnx
import pytest

import cli

try:
    from hardening_util import qdq_conv_model
    from test_exit_codes import ENGINES, INVOCATIONS, PRIMARY_INPUT, fill, synth_data
except ImportError:  # tests/ imported as a package
    from tests.hardening_util import qdq_conv_model
    from tests.test_exit_codes import ENGINES, INVOCATIONS, PRIMARY_INPUT, fill, synth_data

__all__ = ["synth_data"]  # a session fixture shared with test_exit_codes


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture()
def inputs(tmp_path: Path, synth_data: Path) -> dict[str, str]:
    src = tmp_path / "inputs"
    src.mkdir()
    out = tmp_path / "outputs"
    out.mkdir()
    (src / "in.onnx").write_bytes(qdq_conv_model().SerializeToString())
    (src / "in2.onnx").write_bytes(qdq_conv_model(act_scale=0.07).SerializeToString())
    onnx.save_model(
        qdq_conv_model(channels=32),
        str(src / "ext.onnx"),
        save_as_external_data=True,
        location="ext.onnx.data",
        size_threshold=64,
    )
    (src / "ckpt.pt").write_bytes(b"not a checkpoint")
    shutil.copytree(synth_data, src / "data")
    report = src / "engine.graph.json"
    shutil.copyfile(ENGINES / "trt86-reformat-metadata.graph.json", report)
    return {
        "in": str(src / "in.onnx"),
        "in2": str(src / "in2.onnx"),
        "ext": str(src / "ext.onnx"),
        "ckpt": str(src / "ckpt.pt"),
        "report": str(report),
        "out": str(out / "out"),
        "dir": str(out),
        "data": str(src / "data"),
    }


CASES = [pytest.param(n, False, id=n) for n in sorted(PRIMARY_INPUT)] + [
    pytest.param(n, True, id=f"{n}-external-data")
    for n in sorted(PRIMARY_INPUT)
    if PRIMARY_INPUT[n] == "in"
]


@pytest.mark.parametrize(("name", "external"), CASES)
def test_input_unchanged(name: str, external: bool, inputs: dict[str, str], capsys) -> None:
    values = dict(inputs, **({"in": inputs["ext"]} if external else {}))
    folder = Path(inputs["in"]).parent
    before = _snapshot(folder)
    argv = fill(INVOCATIONS[name], values)
    if name == "train":  # a full epoch takes ~20 s: stop at the (garbage) starting checkpoint
        argv += ["--weights", values["ckpt"]]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc in (0, 1, 2), err
    assert "Traceback" not in err
    assert _snapshot(folder) == before


def test_optimize_in_place_is_refused_and_input_unchanged(inputs: dict[str, str], capsys) -> None:
    folder = Path(inputs["in"]).parent
    before = _snapshot(folder)
    for argv in (
        ["optimize", inputs["in"], inputs["in"], "--rules", "cleanup"],
        # the output's <out>.data would be the input's data file
        ["optimize", inputs["ext"], str(folder / "ext.onnx"), "--rules", "cleanup"],
    ):
        rc = cli.main(argv)
        assert rc == 2, capsys.readouterr().err
    assert _snapshot(folder) == before
