"""Opset 10-12 models are upgraded to opset 13 (per-axis Q/DQ, the opset the rules assume) with
ONNX's own ``version_converter`` before validation, instead of being refused: old exporters and
ORT's older quantizer still write them."""

from __future__ import annotations

import onnx

from .errors import InputError

TARGET_OPSET = 13
OLDEST_CONVERTIBLE = 10  # QuantizeLinear/DequantizeLinear exist from opset 10


def default_opset(model: onnx.ModelProto) -> int | None:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else None


def upgrade_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """(model at opset >= 13, a note saying what was done or None). Models already at 13 or
    above, or older than 10, come back unchanged (validation refuses the latter)."""
    opset = default_opset(model)
    if opset is None or opset >= TARGET_OPSET or opset < OLDEST_CONVERTIBLE:
        return model, None
    try:
        upgraded = onnx.version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds; all are bad input
        msg = " ".join(str(exc).split())[:160]
        raise InputError(
            f"model opset {opset} could not be upgraded to {TARGET_OPSET} ({msg}); re-export "
            f"with opset_version>={TARGET_OPSET}"
        ) from None
    return upgraded, f"model upgraded from opset {opset} to {TARGET_OPSET} (onnx.version_converter)"
