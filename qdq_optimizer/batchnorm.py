"""BatchNormalization as a per-channel affine map, ``BN(y) = g * y + h`` with
``g = gamma / sqrt(var + epsilon)``: the one home of that factor, which the BN fold (in float32,
the precision the folded graph keeps) and the reference-weight matching (in float64) share."""

from __future__ import annotations

import numpy as np

from .graph import Node, constant_value

DEFAULT_EPSILON = 1e-5  # ONNX BatchNormalization's default


def bn_scale(bn: Node, dtype: type = np.float32) -> np.ndarray | None:
    """``gamma / sqrt(var + epsilon)`` per channel, computed in ``dtype``; None unless gamma and
    var are constants."""
    gamma, var = constant_value(bn.inputs[1]), constant_value(bn.inputs[4])
    if gamma is None or var is None:
        return None
    eps = dtype(bn.attrs.get("epsilon", DEFAULT_EPSILON))
    return (np.asarray(gamma, dtype) / np.sqrt(np.asarray(var, dtype) + eps)).astype(dtype)


def bn_affine(bn: Node, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray] | None:
    """``(g, h)`` with ``BN(y) = g * y + h``, in ``dtype``; None unless all four parameters are
    constants."""
    if len(bn.inputs) < 5:
        return None
    g = bn_scale(bn, dtype)
    beta, mean = constant_value(bn.inputs[2]), constant_value(bn.inputs[3])
    if g is None or beta is None or mean is None:
        return None
    return g, (np.asarray(beta, dtype) - np.asarray(mean, dtype) * g).astype(dtype)
