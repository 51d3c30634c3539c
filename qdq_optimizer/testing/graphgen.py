"""Small Q/DQ graphs built from YOLO blocks, for tests and hypothesis property tests.

``FloatBuilder`` writes a float ONNX model from blocks (conv-bn-act, ELAN concat, maxpool branch,
SPP, upsample+concat, residual add, split); ``naive_qdq`` quantizes it the way pytorch-quantization
does (Q/DQ before every conv input with its own scale, per-channel weight Q/DQ pairs) and
``ort_qdq`` with ONNX Runtime's ``quantize_static`` (QDQ, symmetric int8, per-channel).
``blocks()`` / ``qdq_models()`` are hypothesis strategies over them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCKS = ("conv", "elan", "maxpool", "spp", "upsample", "residual", "split")
ACTS = ("relu", "leaky", "silu", "clip", "hardswish", None)


@dataclass
class FloatBuilder:
    """Build a float NCHW conv net node by node (names like ``/model.<i>/...``)."""

    channels: int = 4
    size: int = 8
    seed: int = 0
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def _name(self, what: str) -> str:
        self.count += 1
        return f"/model.{self.count}/{what}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], what: str | None = None, **attrs) -> str:
        name = self._name(what or op)
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 1,
        s: int = 1,
        act: str | None = "relu",
        bn: bool = False,
    ) -> str:
        w = (self.rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        base = self._name("conv")
        wn = self.const(f"{base}.weight", w)
        ins = [x, wn]
        if not bn:
            ins.append(
                self.const(
                    f"{base}.bias", (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
                )
            )
        y = self.node(
            "Conv", ins, "conv/Conv", kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4
        )
        if bn:
            p = f"{base}.bn"
            y = self.node(
                "BatchNormalization",
                [
                    y,
                    self.const(
                        f"{p}.weight",
                        (self.rng.uniform(0.5, 1.5, cout) * self.rng.choice([-1, 1], cout)).astype(
                            np.float32
                        ),  # float32: ONNX Runtime binds one type to X and scale
                    ),
                    self.const(f"{p}.bias", self.rng.normal(0, 0.2, cout).astype(np.float32)),
                    self.const(f"{p}.mean", self.rng.normal(0, 0.2, cout).astype(np.float32)),
                    self.const(f"{p}.var", self.rng.uniform(0.5, 2, cout).astype(np.float32)),
                ],
                "bn/BatchNormalization",
                epsilon=1e-3,
            )
        return self.act(y, act)

    def act(self, y: str, act: str | None) -> str:
        if act == "relu":
            return self.node("Relu", [y], "act/Relu")
        if act == "leaky":
            return self.node("LeakyRelu", [y], "act/LeakyRelu", alpha=0.1)
        if act == "clip":
            lo = self.const(self._name("min"), np.float32(0))
            hi = self.const(self._name("max"), np.float32(6))
            return self.node("Clip", [y, lo, hi], "act/Clip")
        if act == "hardswish":
            return self.node("HardSwish", [y], "act/HardSwish")
        if act == "silu":
            s = self.node("Sigmoid", [y], "act/Sigmoid")
            return self.node("Mul", [y, s], "act/Mul")
        return y

    def block(self, kind: str, x: str, act: str | None = "relu", bn: bool = False) -> str:
        c = self.channels
        if kind == "conv":
            return self.conv(x, c, c, 3, 1, act, bn)
        if kind == "elan":
            a = self.conv(x, c, c, 1, 1, act, bn)
            b = self.conv(x, c, c, 1, 1, act, bn)
            d = self.conv(b, c, c, 3, 1, act, bn)
            cat = self.node("Concat", [d, b, a], "Concat", axis=1)
            return self.conv(cat, 3 * c, c, 1, 1, act, bn)
        if kind == "maxpool":
            m = self.node(
                "MaxPool", [x], "MaxPool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]
            )
            b = self.conv(self.conv(x, c, c, 1, 1, act, bn), c, c, 3, 1, act, bn)
            cat = self.node("Concat", [b, self.conv(m, c, c, 1, 1, act, bn)], "Concat", axis=1)
            return self.conv(cat, 2 * c, c, 1, 1, act, bn)
        if kind == "spp":
            x1 = self.conv(x, c, c, 1, 1, act, bn)
            ms = [x1]
            for k in (5, 9):
                ms.append(
                    self.node(
                        "MaxPool",
                        [ms[-1]],
                        "MaxPool",
                        kernel_shape=[k, k],
                        strides=[1, 1],
                        pads=[k // 2] * 4,
                    )
                )
            cat = self.node("Concat", ms, "Concat", axis=1)
            return self.conv(cat, 3 * c, c, 1, 1, act, bn)
        if kind == "upsample":
            d = self.conv(x, c, c, 3, 2, act, bn)
            scales = self.const(self._name("scales"), np.array([1, 1, 2, 2], np.float32))
            up = self.node("Resize", [d, "", scales], "Resize", mode="nearest")
            cat = self.node("Concat", [up, x], "Concat", axis=1)
            return self.conv(cat, 2 * c, c, 1, 1, act, bn)
        if kind == "residual":
            return self.node(
                "Add", [x, self.conv(self.conv(x, c, c, 1, 1, act, bn), c, c, 3, 1, act, bn)], "Add"
            )
        if kind == "split":
            y = self.conv(x, c, 2 * c, 1, 1, act, bn)
            sizes = self.const(self._name("split"), np.array([c, c], np.int64))
            name = self._name("Split")
            a, b = f"{name}_output_0", f"{name}_output_1"
            self.nodes.append(helper.make_node("Split", [y, sizes], [a, b], name=name, axis=1))
            r = self.node(
                "Add", [b, self.conv(self.conv(b, c, c, 1, 1, act, bn), c, c, 3, 1, act, bn)], "Add"
            )
            cat = self.node("Concat", [a, b, r], "Concat", axis=1)
            return self.conv(cat, 3 * c, c, 1, 1, act, bn)
        raise ValueError(kind)

    def build(
        self,
        kinds: list[str],
        acts: list[str | None] | None = None,
        bn: bool = False,
        head: bool = True,
    ) -> onnx.ModelProto:
        x = self.conv("images", 3, self.channels, 3, 1, "relu", bn)
        for i, kind in enumerate(kinds):
            x = self.block(kind, x, (acts or ["relu"] * len(kinds))[i], bn)
        if head:
            x = self.node(
                "Sigmoid", [self.conv(x, self.channels, 3, 1, 1, None, False)], "head/Sigmoid"
            )
        self.nodes.append(helper.make_node("Identity", [x], ["outputs"], name="/out/Identity"))
        graph = helper.make_graph(
            self.nodes,
            "graphgen",
            [
                helper.make_tensor_value_info(
                    "images", TensorProto.FLOAT, [1, 3, self.size, self.size]
                )
            ],
            [helper.make_tensor_value_info("outputs", TensorProto.FLOAT, None)],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="graphgen"
        )
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model)


def naive_qdq(model: onnx.ModelProto, seed: int = 0, ignore: str | None = None) -> onnx.ModelProto:
    """pytorch-quantization's automatic insertion: every Conv gets its own per-tensor input Q/DQ
    (scale drawn at random, so concat inputs disagree) and a per-channel weight Q/DQ pair."""
    import re

    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes = []
    for n in g.node:
        if n.op_type == "Conv" and not (ignore and re.search(ignore, n.name)):
            base = n.name.rsplit("/", 1)[0]
            s_in = f"{base}/_input_quantizer/scale"
            z = f"{base}/_zp"
            g.initializer.append(numpy_helper.from_array(np.float32(rng.uniform(0.01, 0.05)), s_in))
            g.initializer.append(numpy_helper.from_array(np.int8(0), z))
            qi, di = (
                f"{base}/_input_quantizer/QuantizeLinear",
                f"{base}/_input_quantizer/DequantizeLinear",
            )
            new_nodes.append(
                helper.make_node(
                    "QuantizeLinear", [n.input[0], s_in, z], [qi + "_output_0"], name=qi
                )
            )
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear", [qi + "_output_0", s_in, z], [di + "_output_0"], name=di
                )
            )
            w = numpy_helper.to_array(inits[n.input[1]])
            sw = (np.abs(w).reshape(w.shape[0], -1).max(1) / 127).astype(np.float32)
            s_w, z_w = f"{base}/_weight_quantizer/scale", f"{base}/_weight_quantizer/zp"
            g.initializer.append(numpy_helper.from_array(sw, s_w))
            g.initializer.append(numpy_helper.from_array(np.zeros(w.shape[0], np.int8), z_w))
            qw, dw = (
                f"{base}/_weight_quantizer/QuantizeLinear",
                f"{base}/_weight_quantizer/DequantizeLinear",
            )
            new_nodes.append(
                helper.make_node(
                    "QuantizeLinear", [n.input[1], s_w, z_w], [qw + "_output_0"], name=qw, axis=0
                )
            )
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [qw + "_output_0", s_w, z_w],
                    [dw + "_output_0"],
                    name=dw,
                    axis=0,
                )
            )
            n.input[0], n.input[1] = di + "_output_0", dw + "_output_0"
        new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    return m


def ort_qdq(model: onnx.ModelProto, seed: int = 0, samples: int = 2) -> onnx.ModelProto:
    """ONNX Runtime ``quantize_static``: QDQ format, symmetric int8, per-channel weights."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    data = [{"images": rng.random(shape, dtype=np.float32)} for _ in range(samples)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(model, src)
        quantize_static(
            src,
            dst,
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        return onnx.load(dst)


# ------------------------------------------------------------------------- hypothesis
def blocks():
    """Strategy: a list of (block kind, activation) pairs."""
    from hypothesis import strategies as st

    return st.lists(
        st.tuples(st.sampled_from(BLOCKS), st.sampled_from(ACTS)), min_size=1, max_size=4
    )


def qdq_models(forms: tuple[str, ...] = ("naive", "naive-bn", "ort")):
    """Strategy: (form, model) built from random blocks, quantized in one of ``forms``."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw):
        spec = draw(blocks())
        form = draw(st.sampled_from(forms))
        seed = draw(st.integers(0, 2**16))
        kinds, acts = [k for k, _ in spec], [a for _, a in spec]
        fm = FloatBuilder(seed=seed).build(kinds, acts, bn=form == "naive-bn")
        model = ort_qdq(fm, seed) if form == "ort" else naive_qdq(fm, seed)
        return form, spec, model

    return build()
