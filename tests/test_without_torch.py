"""Without the ``train`` extra: trainer commands exit 2 with one line saying to install it, and
``eval`` of an ONNX model runs without importing torch at all.

Each run is a fresh interpreter whose import system refuses torch (and the packages built on it)
and reports every attempt on stderr, so an import that some code catches is still seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "fixtures" / "checkpoints" / "yolov7-tiny-synth.pt"

BLOCKED = ("torch", "torchvision", "pytorch_quantization")
RUN_WITHOUT_TORCH = f"""
import sys
BLOCKED = {BLOCKED!r}
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            sys.stderr.write("blocked import: " + name + "\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NoTorch())
from qdq_optimizer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_without_torch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_TORCH, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line and not line.startswith("blocked import")]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic set (made without torch) and the fixture exported to ONNX (with torch)."""
    pytest.importorskip("PIL")
    root = tmp_path_factory.mktemp("notorch")
    synth = run_without_torch(
        "data", "synth", str(root / "val"), "-n", "4", "--size", "160", "--seed", "3", cwd=root
    )
    assert synth.returncode == 0, synth.stderr  # data synth needs numpy and Pillow only
    assert "blocked import" not in synth.stderr
    out = {"root": root, "data": root / "val"}
    if FIXTURE.is_file() and _has("torch"):
        import onnx

        from cli import main

        onnx_path = root / "tiny.onnx"
        assert main(["export", str(FIXTURE), "--save", str(onnx_path)]) == 0
        dims = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == [1, 3, 160, 160]  # the checkpoint's size, not 640
        out["onnx"] = onnx_path
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["quantize", "{ckpt}", "--data", "{data}", "--ptq", "{root}/ptq.pt"],
        ["export", "{ckpt}", "--save", "{root}/x.onnx"],
        ["train", "--data", "{data}", "--save", "{root}/t.pt", "--epochs", "1"],
        ["sensitive", "{ckpt}", "--data", "{data}"],
        ["eval", "{ckpt}", "--data", "{data}"],  # a .pt needs torch
    ],
    ids=lambda a: a[0],
)
def test_trainer_commands_say_install_the_train_extra(argv, work) -> None:
    values = {"ckpt": str(FIXTURE), "data": str(work["data"]), "root": str(work["root"])}
    res = run_without_torch(*(a.format(**values) for a in argv), cwd=work["root"])
    assert res.returncode == 2, res.stderr
    errors = _errors(res.stderr)
    assert len(errors) == 1, res.stderr
    assert errors[0].startswith(f"qdqopt: error: 'qdqopt {argv[0]}' needs torch")
    assert "install qdqopt[train]" in errors[0] and "internal error" not in res.stderr
    assert not any((work["root"] / n).exists() for n in ("ptq.pt", "x.onnx", "t.pt"))


def test_eval_of_onnx_imports_no_torch(work) -> None:
    pytest.importorskip("pycocotools")
    if "onnx" not in work:
        pytest.skip("needs torch and the fixture checkpoint to make the ONNX model")
    from trainer.evaluate import evaluate

    res = run_without_torch(
        "eval", str(work["onnx"]), "--data", str(work["data"]), "--json", cwd=work["root"]
    )
    assert res.returncode == 0, res.stderr
    assert "blocked import" not in res.stderr  # torch was never even asked for
    got = json.loads(res.stdout)
    want = evaluate(work["onnx"], work["data"], 160, batch_size=16, progress=False)
    assert got["images"] == 4 and want["detections"] > 0
    assert got["detections"] == pytest.approx(want["detections"], rel=0.01)
    assert got["map50"] == pytest.approx(want["map50"], abs=1e-3)
    assert got["map"] == pytest.approx(want["map"], abs=1e-3)
