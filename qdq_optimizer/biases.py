"""A Conv/Gemm bias read and written as float: one home for the rules that move biases
(``shift-relu-range``, ``actions/mean_keep.py``) and the reference pre-pass that compares them."""

from __future__ import annotations

import numpy as np

from .graph import Node, QGraph, constant_value
from .qdq_numpy import dequantize_np


def float_bias(graph: QGraph, op: Node, cout: int) -> np.ndarray | None:
    """The bias a Conv/Gemm adds, as float64 of length ``cout``: zeros when it has none, a float
    constant, or what an int32 bias DQ computes (ONNX Runtime's form); None for anything else."""
    if len(op.inputs) < 3 or not op.inputs[2].name:
        return np.zeros(cout, np.float64)
    t = op.inputs[2]
    value = constant_value(t)
    if value is None:
        dq = graph.producer(t)
        raw = constant_value(dq.inputs[0]) if graph.is_dq(dq) else None
        if raw is None:
            return None
        p = graph.qparams(dq)
        value = dequantize_np(raw, p.scale, p.zero_point, p.axis)
    b = np.asarray(value, np.float64).reshape(-1)
    return b if b.size == cout else None


def set_float_bias(graph: QGraph, op: Node, bias: np.ndarray) -> None:
    """Give ``op`` ``bias`` as a constant in the graph's float type (added when it had none)."""
    c = graph.float_constant(f"{op.name}_bias", np.asarray(bias, np.float32))
    if len(op.inputs) > 2:
        graph.set_input(op, 2, c)
    else:
        op.inputs.append(c)
        graph.touch()
