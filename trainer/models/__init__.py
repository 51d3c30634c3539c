"""Built-in detectors (YOLOv7, YOLOv7-tiny) with official parameter names."""

from .common import MP, SP, SPPCSPC, Concat, Conv, Detect, RepConv
from .yolo import ARCHITECTURES, YoloModel, build_model

__all__ = [
    "ARCHITECTURES",
    "MP",
    "SP",
    "SPPCSPC",
    "Concat",
    "Conv",
    "Detect",
    "RepConv",
    "YoloModel",
    "build_model",
]
