"""Helpers for the TensorRT rule tests: hand-written Q/DQ graphs with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdq_optimizer.graph import QGraph


class G:
    """A tiny graph writer: ``g.q(x, 0.1)`` adds a Q/DQ pair and returns the DQ output."""

    def __init__(self, c: int = 2, hw: int = 4, seed: int = 0) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.c, self.hw = c, hw
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def _id(self, p: str) -> str:
        self.n += 1
        return f"{p}{self.n}"

    def const(self, value, name: str | None = None) -> str:
        name = name or self._id("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs):
        name = name or self._id(op)
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def q(self, x: str, scale: float, name: str | None = None, dtype=np.int8) -> str:
        name = name or self._id("q")
        s = self.const(np.float32(scale))
        z = self.const(dtype(0))
        qo = self.op("QuantizeLinear", [x, s, z], f"{name}_Q")
        return self.op("DequantizeLinear", [qo, s, z], f"{name}_DQ")

    def weight(self, cout: int, cin: int, k: int = 1, form: str = "int8") -> str:
        w = (self.rng.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32)
        s = (np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
        z = np.zeros(cout, np.int8)
        if form == "float":
            return self.const(w)
        if form == "pair":
            qo = self.op("QuantizeLinear", [self.const(w), self.const(s), self.const(z)], axis=0)
            return self.op("DequantizeLinear", [qo, self.const(s), self.const(z)], axis=0)
        wq = np.clip(np.rint(w / s[:, None, None, None]), -127, 127).astype(np.int8)
        return self.op("DequantizeLinear", [self.const(wq), self.const(s), self.const(z)], axis=0)

    def conv(
        self,
        x: str,
        cout: int | None = None,
        cin: int | None = None,
        form: str = "int8",
        name: str | None = None,
        k: int = 1,
    ) -> str:
        cout, cin = cout or self.c, cin or self.c
        b = self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32))
        return self.op(
            "Conv",
            [x, self.weight(cout, cin, k, form), b],
            name,
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
        )

    def model(
        self, outputs: list[str], opset: int = 13, inputs: dict[str, list[int]] | None = None
    ) -> onnx.ModelProto:
        ins = inputs or {"x": [1, self.c, self.hw, self.hw]}
        nodes = list(self.nodes)
        outs = []
        for i, o in enumerate(outputs):
            nodes.append(helper.make_node("Identity", [o], [f"y{i}"], name=f"out{i}"))
            outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
        g = helper.make_graph(
            nodes,
            "t",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in ins.items()],
            outs,
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        m = onnx.shape_inference.infer_shapes(m)
        onnx.checker.check_model(m)
        return m


def qgraph(model: onnx.ModelProto) -> QGraph:
    return QGraph.from_model(model)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def count(model: onnx.ModelProto, op: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op)


def node(model: onnx.ModelProto, name: str):
    return next(n for n in model.graph.node if n.name == name)


def outputs(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None, seed: int = 0
) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    if feeds is None:
        rng = np.random.default_rng(seed)
        feeds = {
            i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(
                np.float32
            )
            for i in sess.get_inputs()
        }
    return sess.run(None, feeds)


def scales_of(model: onnx.ModelProto, op: str = "QuantizeLinear") -> dict[str, float]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.name: float(np.asarray(inits[n.input[1]]).reshape(-1)[0])
        for n in model.graph.node
        if n.op_type == op and n.input[1] in inits
    }
