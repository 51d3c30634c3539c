"""batchnorm.bn_scale / bn_affine: the one BatchNormalization factor the BN fold and the
reference-weight matching share."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qdq_optimizer.batchnorm import bn_affine, bn_scale
from qdq_optimizer.graph import QGraph


def _bn_model(params: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:
    names = ["gamma", "beta", "mean", "var"]
    node = helper.make_node("BatchNormalization", ["y", *names], ["z"], "bn", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 4, 4])],
        [numpy_helper.from_array(params[k], k) for k in names if k in params],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _params(rng) -> dict[str, np.ndarray]:
    return {
        "gamma": rng.uniform(-2, 2, 3).astype(np.float32),
        "beta": rng.normal(size=3).astype(np.float32),
        "mean": rng.normal(size=3).astype(np.float32),
        "var": rng.uniform(1e-4, 3, 3).astype(np.float32),
    }


def test_affine_map_is_the_operator():
    rng = np.random.default_rng(0)
    model = _bn_model(_params(rng), epsilon=1e-3)
    y = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    (want,) = ReferenceEvaluator(model).run(None, {"y": y})
    (bn,) = QGraph.from_model(model).nodes
    for dtype in (np.float32, np.float64):
        g, h = bn_affine(bn, dtype)
        assert g.dtype == h.dtype == dtype
        got = g[:, None, None] * y + h[:, None, None]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_default_epsilon_and_the_float32_fold_formula():
    p = _params(np.random.default_rng(1))
    (bn,) = QGraph.from_model(_bn_model(p)).nodes  # no epsilon attribute: ONNX's 1e-5
    want = (p["gamma"] / np.sqrt(p["var"] + np.float32(1e-5))).astype(np.float32)
    np.testing.assert_array_equal(bn_scale(bn), want)
    g64 = bn_scale(bn, np.float64)
    gamma, var = (p[k].astype(np.float64) for k in ("gamma", "var"))
    np.testing.assert_array_equal(g64, gamma / np.sqrt(var + 1e-5))


def test_non_constant_parameters_give_none():
    p = _params(np.random.default_rng(2))
    del p["mean"]  # a graph input: not a constant
    model = _bn_model(p)
    model.graph.input.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, [3]))
    (bn,) = QGraph.from_model(model).nodes
    assert bn_scale(bn) is not None  # gamma and var are constants
    assert bn_affine(bn) is None
