"""A plain (non-editable) install works: build the wheel, install it into a clean virtual
environment (no system site-packages, no torch), and use it from a folder outside the checkout.

Catches what an editable install hides: built-in rule sets missing from the wheel, a console
script pointing at a module that is not installed, a stray top-level ``cli`` module, and trainer
commands that crash instead of naming the ``train`` extra. The core dependencies come from the
package index (or pip's cache / configured find-links); about a minute.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "fixtures" / "optimizer" / "yolo-like.onnx"
CHECKPOINT = REPO / "fixtures" / "checkpoints" / "yolov7-tiny-synth.pt"
# what setup.py / setup.cfg build from; everything else in the checkout stays out of the wheel
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "rules",
           "qdq_optimizer", "trainer")  # fmt: skip


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheel needs setuptools in this environment")
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = root / "dist"
    res = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "-q", "-w", str(dist), str(src)], cwd=root)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = dist.glob("qdqopt-*.whl")
    venv = root / "venv"
    # no system site-packages: nothing but the wheel and its declared dependencies
    res = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    assert res.returncode == 0, res.stderr
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    res = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                "--no-warn-script-location", str(wheel)], cwd=root, timeout=600)  # fmt: skip
    if res.returncode != 0 and "Could not find a version" in res.stderr:
        pytest.skip("the core dependencies are not reachable (no package index, no cache)")
    assert res.returncode == 0, res.stderr[-3000:]
    elsewhere = root / "elsewhere"  # not the checkout: only the installed package is importable
    elsewhere.mkdir()
    return {"wheel": wheel, "python": python, "qdqopt": bin_dir / "qdqopt", "cwd": elsewhere}


def test_wheel_ships_rule_sets_and_no_top_level_cli(installed) -> None:
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    shipped = sorted(Path(n).name for n in names if n.startswith("qdq_optimizer/rules/"))
    assert shipped == sorted(p.name for p in (REPO / "rules").glob("*.yaml"))
    assert "qdq_optimizer/cli.py" in names and "qdq_optimizer/__main__.py" in names
    assert "cli.py" not in names  # the checkout's shim is not installed
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "qdqopt = qdq_optimizer.cli:main"
        in zipfile.ZipFile(installed["wheel"]).read(entry).decode()
    )


def test_installed_qdqopt_optimizes_from_another_folder(installed) -> None:
    cwd = installed["cwd"]
    res = _run([str(installed["qdqopt"]), "optimize", str(FIXTURE), "opt.onnx", "--rules",
                "tensorrt"], cwd=cwd)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (cwd / "opt.onnx").stat().st_size > 0 and "wrote opt.onnx" in res.stdout
    # the package's own rule sets, not the checkout's: the listing comes from site-packages
    probe = "import qdq_optimizer.ruleset as r; print(r.RULES_DIR); print(r.available_rulesets())"
    res = _run([str(installed["python"]), "-c", probe], cwd=cwd)
    rules_dir, names = res.stdout.splitlines()
    assert "site-packages" in rules_dir and not rules_dir.startswith(str(REPO))
    assert "tensorrt" in names and "yolov7-tiny" in names


def test_python_dash_m_and_no_cli_module(installed) -> None:
    cwd = installed["cwd"]
    res = _run([str(installed["python"]), "-m", "qdq_optimizer", "--help"], cwd=cwd)
    assert res.returncode == 0 and "Usage: qdqopt" in res.stdout, res.stderr
    res = _run([str(installed["python"]), "-c", "import cli"], cwd=cwd)
    assert res.returncode != 0 and "No module named 'cli'" in res.stderr
    res = _run([str(installed["qdqopt"]), "lint", str(FIXTURE), "--rules", "nope"], cwd=cwd)
    assert res.returncode == 2
    assert "available: attention, cleanup, tensorrt" in res.stderr  # the shipped sets, sorted
    assert "$QDQOPT_RULES_PATH" in res.stderr


def test_trainer_command_without_torch_names_the_extra(installed) -> None:
    res = _run([str(installed["python"]), "-c", "import torch"], cwd=installed["cwd"])
    assert res.returncode != 0  # the clean environment really has no torch
    res = _run([str(installed["qdqopt"]), "quantize", str(CHECKPOINT), "--data", "nowhere",
                "--ptq", "ptq.pt"], cwd=installed["cwd"])  # fmt: skip
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qdqopt: error: 'qdqopt quantize' needs torch")
    assert "install qdqopt[train]" in lines[0]
