"""Small builders for Q/DQ ONNX graphs used by the optimizer tests, fixtures and benchmark.

Everything is seeded and built with onnx.helper, so a graph is identical on every run.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    """Accumulate nodes and initializers; ``build()`` returns a checked, shape-inferred model."""

    def __init__(self, opset: int = 13, seed: int = 0) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    # ------------------------------------------------------------------ primitives
    def input(self, name: str, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(
        self, op: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs
    ) -> str | list[str]:
        name = name or self._name(op)
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def q(
        self, x: str, scale: float | np.ndarray, axis: int | None = None, name: str | None = None
    ) -> str:
        s = self.const(np.asarray(scale, dtype=np.float32), "q_scale")
        z = self.const(np.zeros(np.shape(scale), dtype=np.int8), "q_zp")
        kw = {} if axis is None else {"axis": axis}
        return self.node("QuantizeLinear", [x, s, z], name=name or self._name("Q"), **kw)

    def dq(
        self, x: str, scale: float | np.ndarray, axis: int | None = None, name: str | None = None
    ) -> str:
        s = self.const(np.asarray(scale, dtype=np.float32), "dq_scale")
        z = self.const(np.zeros(np.shape(scale), dtype=np.int8), "dq_zp")
        kw = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", [x, s, z], name=name or self._name("DQ"), **kw)

    def qdq(self, x: str, scale: float, name: str | None = None) -> str:
        base = name or self._name("qdq")
        return self.dq(self.q(x, scale, name=f"{base}_Q"), scale, name=f"{base}_DQ")

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        act: str | None = "Relu",
        in_scale: float | None = 0.05,
        name: str | None = None,
    ) -> str:
        """[Q/DQ on input] -> Conv with int8 per-channel weights behind DQ -> activation."""
        name = name or self._name("conv")
        if in_scale is not None:
            x = self.qdq(x, in_scale, name=f"{name}_in")
        w = self.rng.integers(-127, 128, size=(cout, cin, k, k), dtype=np.int8)
        ws = (self.rng.random(cout).astype(np.float32) + 0.5) * 0.002
        wq = self.const(w, f"{name}_w")
        wd = self.dq(wq, ws, axis=0, name=f"{name}_wDQ")
        b = self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, f"{name}_b")
        y = self.node(
            "Conv",
            [x, wd, b],
            name=name,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
        )
        if act == "Relu":
            y = self.node("Relu", [y], name=f"{name}_act")
        elif act == "SiLU":
            s = self.node("Sigmoid", [y], name=f"{name}_sig")
            y = self.node("Mul", [y, s], name=f"{name}_act")
        return y

    def output(self, name: str) -> None:
        self.outputs.append(name)

    def build(self, name: str = "qdq-test") -> onnx.ModelProto:
        outs = [helper.make_empty_tensor_value_info(o) for o in self.outputs]
        graph = helper.make_graph(self.nodes, name, self.inputs, outs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="qdqopt-tests"
        )
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        inferred = {v.name: v for v in model.graph.value_info}
        for out in model.graph.output:  # declare graph outputs with their inferred types
            if out.name in inferred:
                out.CopyFrom(inferred[out.name])
        onnx.checker.check_model(model, full_check=True)
        return model


# ---------------------------------------------------------------------- canned graphs
def messy_model(seed: int = 0) -> onnx.ModelProto:
    """A small conv graph with every kind of redundancy the cleanup rules remove:
    a Q -> DQ -> Q -> DQ chain with equal scales (ORT QDQ style output + input pairs), two
    duplicate Q/DQ pairs on one tensor, a dead DQ, and a chain with *different* scales
    that must stay."""
    b = Builder(seed=seed)
    x = b.input("images", [1, 3, 16, 16])
    y = b.conv(x, 3, 8, name="stem")
    # ORT QDQ style: pair on the conv output, then again on the next conv's input (equal scale)
    y = b.qdq(y, 0.04, name="stem_out")
    y1 = b.conv(y, 8, 8, in_scale=0.04, name="c1")
    # two consumers, each with its own identical pair
    a = b.conv(y1, 8, 8, in_scale=0.03, name="left")
    c = b.conv(y1, 8, 8, in_scale=0.03, name="right")
    # a dead DQ hanging off the left branch's quantized input
    q_left = "left_in_Q_out"
    b.dq(q_left, 0.03, name="dead_DQ")
    cat = b.node("Concat", [a, c], name="cat", axis=1)
    # a requantization with a different scale: not removable
    r = b.qdq(cat, 0.05, name="cat_out")
    r = b.qdq(r, 0.07, name="requant")
    z = b.conv(r, 16, 4, k=1, act=None, in_scale=None, name="head")
    b.output(z)
    return b.build("messy")


def yolo_like(
    stages: int = 4, width: int = 8, seed: int = 0, size: int = 32, redundant: bool = False
) -> onnx.ModelProto:
    """A YOLO-topology Q/DQ graph as pytorch-quantization exports it naively: Q/DQ before every
    conv (unequal scales on concat inputs), SiLU activations, ELAN concats, MaxPool branches,
    nearest upsampling and a float head. ``stages`` scales the node count linearly.
    ``redundant`` adds what the cleanup rules remove: the two branch convs of each block get
    duplicate pairs and the fuse conv's input a doubled (DQ->Q) pair."""
    b = Builder(seed=seed)
    rng = np.random.default_rng(seed + 1)

    def sc() -> float:
        return float(rng.uniform(0.01, 0.1))

    x = b.input("images", [1, 3, size, size])
    y = b.conv(x, 3, width, act="SiLU", in_scale=sc(), name="stem")
    skips = []
    for s in range(stages):
        p = f"s{s}"
        # ELAN block: two branches, a chain, concat, 1x1 fuse
        s_a = sc()
        a = b.conv(y, width, width, k=1, act="SiLU", in_scale=s_a, name=f"{p}.a")
        s_b = s_a if redundant else sc()
        c = b.conv(y, width, width, k=1, act="SiLU", in_scale=s_b, name=f"{p}.b")
        d = b.conv(c, width, width, act="SiLU", in_scale=sc(), name=f"{p}.c")
        e = b.conv(d, width, width, act="SiLU", in_scale=sc(), name=f"{p}.d")
        cat = b.node("Concat", [a, c, d, e], name=f"{p}.cat", axis=1)
        s_f = sc()
        if redundant:
            cat = b.qdq(cat, s_f, name=f"{p}.cat_out")
        y = b.conv(cat, 4 * width, width, k=1, act="SiLU", in_scale=s_f, name=f"{p}.fuse")
        # MP branch (MaxPool 3x3 stride 1 keeps the size so stages stay stackable)
        m = b.node("MaxPool", [y], name=f"{p}.mp", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        m = b.conv(m, width, width, k=1, act="SiLU", in_scale=sc(), name=f"{p}.mpconv")
        y = b.node("Concat", [m, y], name=f"{p}.mpcat", axis=1)
        y = b.conv(y, 2 * width, width, k=1, act="SiLU", in_scale=sc(), name=f"{p}.out")
        skips.append(y)
    # neck: downsample + nearest upsample + concat with an earlier stage
    dn = b.node("MaxPool", [y], name="neck.down", kernel_shape=[2, 2], strides=[2, 2])
    scales = b.const(np.array([1, 1, 2, 2], dtype=np.float32), "up_scales")
    up = b.node("Resize", [dn, "", scales], name="neck.up", mode="nearest")
    y = b.node("Concat", [up, skips[0]], name="neck.cat", axis=1)
    y = b.conv(y, 2 * width, width, act="SiLU", in_scale=sc(), name="neck.conv")
    head = b.conv(y, width, 16, k=1, act=None, in_scale=None, name="head.m.0")
    b.output(head)
    return b.build("yolo-like")
