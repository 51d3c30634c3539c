"""The YOLO rule sets' ignore lists match Ultralytics exports whatever the Detect index.

Node names as torch.onnx writes them (``/model.23/dfl/conv/Conv``: module scopes joined by '/',
ModuleList items as ``m.0``, Sequential children under their own scope ``/m/m.0/``) and as
module paths (``model.23.dfl.conv``)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from qdq_optimizer.api import optimize
from qdq_optimizer.graph import name_matches
from qdq_optimizer.ruleset import load_ruleset

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "yolov8ish-naive.onnx"


def ignored(rules: str, name: str) -> bool:
    return name_matches(name, load_ruleset(rules).ignore)


@pytest.mark.parametrize("rules", ["yolov8", "yolo11"])
@pytest.mark.parametrize(
    "name, expect",
    [
        ("/model.22/dfl/conv/Conv", True),  # yolov8n/s/m/l/x
        ("/model.23/dfl/conv/Conv", True),  # yolo11
        ("/model.28/dfl/conv/Conv", True),  # a P6 / custom yaml
        ("model.23.dfl.conv", True),
        ("/model.23/dfl/conv/_input_quantizer/QuantizeLinear", True),
        ("/model.23/cv2.0/cv2.0.0/conv/Conv", False),  # box branch convs stay INT8
        ("/model.2/m.0/cv1/conv/Conv", False),
        ("/model.23/Concat_3", False),
    ],
)
def test_dfl_matches_any_detect_index(rules: str, name: str, expect: bool) -> None:
    assert ignored(rules, name) is expect


@pytest.mark.parametrize(
    "name, expect",
    [
        ("/model.24/m.0/Conv", True),  # yolov5s/m/l/x Detect
        ("/model.33/m.2/Conv", True),  # yolov5 P6 Detect
        ("model.24.m.1", True),
        ("/model.24/m.0/_input_quantizer/QuantizeLinear", True),
        ("/model.2/m/m.0/cv1/conv/Conv", False),  # C3 bottleneck (Sequential m)
        ("model.2.m.0.cv1.conv", False),
        ("/model.2/m/m.0/Add", False),  # the bottleneck's residual Add
        ("/model.8/m/m.0/cv2/conv/Conv", False),
        ("/model.24/Reshape", False),
    ],
)
def test_yolov5_detect_convs_match_any_index(name: str, expect: bool) -> None:
    assert ignored("yolov5", name) is expect


@pytest.mark.skipif(not FIXTURE.exists(), reason="fixture missing")
def test_a_moved_detect_head_is_kept_float_by_structure_of_names() -> None:
    """The YOLOv8 fixture (a torch.onnx export, Detect as model.22) renumbered to model.23 as in
    YOLO11: the DFL conv stays float exactly as before."""
    base = onnx.load(FIXTURE)
    moved = onnx.ModelProto()
    moved.CopyFrom(base)
    for n in moved.graph.node:
        n.name = n.name.replace("/model.22/", "/model.23/")
    assert any("/model.23/dfl/conv/Conv" == n.name for n in moved.graph.node)
    a, rep_a = optimize(base, "yolov8")
    b, rep_b = optimize(moved, "yolo11")
    assert rep_a.result("keep-ignored-float").count == 1
    assert rep_b.result("keep-ignored-float").count == 1
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
