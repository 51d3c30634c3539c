"""Small, valid Q/DQ models (and helpers) for the hardening tests: built in code, no files."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def qdq_conv_model(
    *,
    channels: int = 4,
    opset: int = 13,
    act_scale: float = 0.05,
    weight_zero_point: int = 0,
    seed: int = 0,
) -> onnx.ModelProto:
    """input -> Q/DQ -> Conv (per-channel Q/DQ weights) -> Relu -> MaxPool -> Q/DQ -> Concat."""
    rng = np.random.default_rng(seed)
    c = channels
    w = rng.standard_normal((c, 3, 3, 3)).astype(np.float32)
    w_scale = (np.abs(w).reshape(c, -1).max(axis=1) / 127).astype(np.float32)
    w_q = np.clip(np.round(w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(act_scale, np.float32), "in_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "in_zp"),
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.full(c, weight_zero_point, np.int8), "w_zp"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array(0.1, np.float32), "mid_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "mid_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "in_scale", "in_zp"], ["x_q"], name="q_in"),
        helper.make_node("DequantizeLinear", ["x_q", "in_scale", "in_zp"], ["x_dq"], name="dq_in"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w", axis=0
        ),
        helper.make_node("Conv", ["x_dq", "w_dq", "bias"], ["conv"], name="conv0", pads=[1] * 4),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu0"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="pool0", kernel_shape=[2, 2]),
        helper.make_node("QuantizeLinear", ["pool", "mid_scale", "mid_zp"], ["p_q"], name="q_mid"),
        helper.make_node(
            "DequantizeLinear", ["p_q", "mid_scale", "mid_zp"], ["p_dq"], name="dq_mid"
        ),
        helper.make_node("Concat", ["p_dq", "pool"], ["outputs"], name="concat0", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, [1, 2 * c, 7, 7])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def chain_model(n_nodes: int) -> onnx.ModelProto:
    """A Q/DQ-headed chain of ``n_nodes`` Relu nodes: deep enough to break recursive walkers."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["t0"], name="dq"),
    ]
    nodes += [
        helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu{i}") for i in range(n_nodes)
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(f"t{n_nodes}", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.array(0.02, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    init(model, name).CopyFrom(numpy_helper.from_array(value, name))
