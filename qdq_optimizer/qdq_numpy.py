"""ONNX QuantizeLinear / DequantizeLinear in numpy, as ONNX Runtime computes them: the one home of
the Q/DQ arithmetic the rules (re-quantized weights, folded biases) and the pre-passes share."""

from __future__ import annotations

import numpy as np

INT8_RANGE = (-128, 127)


def axis_shape(ndim: int, axis: int | None, n: int) -> tuple[int, ...]:
    """The shape that broadcasts ``n`` per-axis parameters along ``axis`` of a rank-``ndim``
    tensor; () for per-tensor ones."""
    if axis is None or n == 1:
        return ()
    shape = [1] * ndim
    shape[axis] = n
    return tuple(shape)


def quantize_np(
    w: np.ndarray,
    scale: np.ndarray,
    zp: np.ndarray | None,
    axis: int | None,
    qrange: tuple[int, int] = INT8_RANGE,
) -> np.ndarray:
    """ONNX QuantizeLinear in numpy: saturate(round_half_even(w / s) + zp) to ``qrange`` (int8,
    or another integer type's range: int32 values then)."""
    w = np.asarray(w, dtype=np.float32)
    s = np.asarray(scale, dtype=np.float32)
    shape = axis_shape(w.ndim, axis, s.size)
    s = s.reshape(shape) if shape else s.reshape(())
    z = np.zeros(()) if zp is None else np.asarray(zp, dtype=np.float64).reshape(shape or ())
    q = np.rint(w / s).astype(np.float64) + z
    return np.asarray(np.clip(q, *qrange), dtype=np.int8 if qrange == INT8_RANGE else np.int32)


def centered_np(x: np.ndarray, zp: np.ndarray | None, axis: int | None) -> np.ndarray:
    """``x - zero_point`` as int32 (per ``axis`` when the zero point is per-axis): the integers
    a DequantizeLinear multiplies by its scale."""
    x = np.asarray(x)
    if zp is None:
        return x.astype(np.int32)
    z = np.asarray(zp).astype(np.int32)
    shape = axis_shape(x.ndim, axis, z.size)
    return x.astype(np.int32) - z.reshape(shape or ())


def dequantize_np(
    x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int | None
) -> np.ndarray:
    """ONNX DequantizeLinear in numpy (float32, as ONNX Runtime computes it)."""
    x = np.asarray(x)
    s = np.asarray(scale, dtype=np.float32)
    shape = axis_shape(x.ndim, axis, s.size)
    s = s.reshape(shape) if shape else s.reshape(())
    return np.asarray(centered_np(x, zp, axis).astype(np.float32) * s, dtype=np.float32)
