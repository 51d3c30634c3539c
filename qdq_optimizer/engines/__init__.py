"""Read TensorRT engine layer reports and verify that an engine runs in INT8 end to end.

Library API::

    from qdq_optimizer.engines import load_report, summarize, check
    report = load_report("model.graph.json")
    print(summarize(report).to_json())
"""

from __future__ import annotations

from .gate import Violation, check, enforce
from .layer_report import load_report
from .model import EngineReport, Layer, TensorInfo
from .profile import Profile, attach_profile, load_profile
from .summary import Summary, summarize

__all__ = [
    "EngineReport",
    "Layer",
    "Profile",
    "Summary",
    "TensorInfo",
    "Violation",
    "attach_profile",
    "check",
    "enforce",
    "load_profile",
    "load_report",
    "summarize",
]
