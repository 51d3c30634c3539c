"""Build an engine and write it with its layer report (``qdqopt build``), checked before writing.

Both files are written only after the report parses as a detailed layer report
(``engines.layer_report``); the TensorRT calls themselves are in ``engines.tensorrt_api``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, UsageError
from ..fileio import check_output_path, write_bytes_atomic, write_text_atomic
from .layer_report import parse_json_documents, report_from_documents
from .tensorrt_api import (
    EngineBuilder,
    TensorRTBuilder,
    default_report_path,
    import_tensorrt,
    trtexec_hint,
)

#: The builder the CLI uses; tests replace it with a fake.
default_builder: EngineBuilder = TensorRTBuilder()


@dataclass
class BuildOutcome:
    engine_path: Path
    report_path: Path
    layers: int


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    report_path: str | os.PathLike | None = None,
    fp16: bool = False,
    builder: EngineBuilder | None = None,
) -> BuildOutcome:
    """Build ``onnx_path`` into ``engine_path`` and write its detailed layer report beside it.

    Both files are written atomically, and only after the report parses as a detailed one.
    """
    onnx_p = Path(onnx_path)
    if not onnx_p.is_file():
        raise InputError(f"ONNX model not found: {onnx_p}")
    engine_p = check_output_path(engine_path, onnx_p)
    report_p = check_output_path(
        report_path if report_path is not None else default_report_path(engine_p), onnx_p
    )
    if report_p.resolve() == engine_p.resolve():
        raise UsageError("--report must differ from --engine")
    if builder is None and isinstance(default_builder, TensorRTBuilder):
        # fail before any work, with a trtexec line that writes where build would have
        hint = trtexec_hint(onnx_path, engine_path=engine_path, report_path=report_path)
        import_tensorrt("qdqopt build", hint)
    result = (builder or default_builder).build(onnx_p, fp16=fp16)
    report = report_from_documents(
        parse_json_documents(result.layer_info, str(report_p)), str(report_p)
    )
    write_bytes_atomic(engine_p, result.engine)
    write_text_atomic(report_p, result.layer_info)
    return BuildOutcome(engine_path=engine_p, report_path=report_p, layers=len(report.layers))
