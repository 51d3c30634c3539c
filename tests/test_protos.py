"""protos.constant_tensors: the one scan of a model's constant TensorProtos (initializers and
``Constant`` nodes) that the pre-pass decisions read."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from qdq_optimizer.protos import constant_tensors


def test_initializers_and_constant_node_tensors_by_name() -> None:
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    c = numpy_helper.from_array(np.zeros((4, 1), np.float16), "c_value")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=c),
        helper.make_node("Constant", [], ["f"], value_float=1.5),  # no TensorProto behind it
        helper.make_node("Add", ["c", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)], [w]
    )
    model = helper.make_model(graph)
    found = constant_tensors(model)
    assert set(found) == {"w", "c"}
    assert found["w"] is model.graph.initializer[0]  # the proto itself: nothing decoded
    assert found["c"].data_type == TensorProto.FLOAT16 and list(found["c"].dims) == [4, 1]
