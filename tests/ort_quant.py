"""Small float CNNs quantized by ONNX Runtime's ``quantize_static`` (its uint8 and asymmetric int8
defaults, and its symmetric int8), for the symmetric-int8 rule tests and measurements."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
ACTS = ("relu", "hardswish", "relu6")


def photos(part: str, n: int | None = None) -> np.ndarray:
    """Held-out (``val``) or calibration (``calib``) photographs, scaled to [0, 1]."""
    x = np.load(MODELS / f"photos-{part}-160.npz")["images"].astype(np.float32) / 255.0
    return x[:n] if n else x


def float_cnn(act: str, seed: int = 0, width: int = 8) -> onnx.ModelProto:
    """Three 3x3 convs with ``act`` after each (Relu, HardSwish, or ReLU6 as Clip(0, 6)), then a
    1x1 conv head; weights seeded, scaled so activations stay O(1) (O(10) for ReLU6, so its
    upper clamp matters)."""
    rng = np.random.default_rng(seed)
    gain = 6.0 if act == "relu6" else 1.6
    nodes, inits = [], []
    x, cin = "x", 3
    for i in range(4):
        k, cout = (3, width) if i < 3 else (1, 4)
        w = (rng.standard_normal((cout, cin, k, k)) * (gain / np.sqrt(cin * k * k))).astype(
            np.float32
        )
        b = (rng.standard_normal(cout) * 0.3).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        y = f"conv{i}"
        nodes.append(
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], name=y, pads=[k // 2] * 4)
        )
        x = y
        if i == 3:
            break
        a = f"act{i}"
        if act == "relu":
            nodes.append(helper.make_node("Relu", [x], [a], name=a))
        elif act == "hardswish":
            nodes.append(helper.make_node("HardSwish", [x], [a], name=a))
        else:
            if i == 0:
                inits += [
                    numpy_helper.from_array(np.float32(0), "lo"),
                    numpy_helper.from_array(np.float32(6), "hi"),
                ]
            nodes.append(helper.make_node("Clip", [x, "lo", "hi"], [a], name=a))
        x, cin = a, cout
    g = helper.make_graph(
        nodes,
        f"cnn_{act}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 160, 160])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 160, 160])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def ort_quantize(
    model: onnx.ModelProto, mode: str, calib: np.ndarray, **options
) -> onnx.ModelProto:
    """``mode``: ``uint8`` (QUInt8 activations and weights), ``int8-asym`` (ORT's default),
    ``int8-sym`` (ActivationSymmetric), ``uint8-pc`` (uint8, per-channel weights). ``options``:
    more ``quantize_static`` keywords (``weight_type``: a QuantType name) or ``extra_options``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    kw: dict = {"quant_format": QuantFormat.QDQ}
    if mode.startswith("uint8"):
        kw.update(activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
        kw["per_channel"] = mode.endswith("-pc")
    elif mode == "int8-sym":
        kw.update(extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        kw["per_channel"] = True
    for key, value in options.items():
        if key in ("activation_type", "weight_type"):
            kw[key] = QuantType[value]
        elif key in ("per_channel",):
            kw[key] = value
        else:
            kw.setdefault("extra_options", {})[key] = value
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "f.onnx", Path(d) / "q.onnx"
        onnx.save(model, src)
        quantize_static(src, dst, Reader(), **kw)
        return onnx.load(dst)


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Outputs with ORT's graph fusions off: Q/DQ computed as written (what TensorRT emulates),
    not ORT's integer kernels (its x86 u8s8 kernels saturate on int8 activations)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(
        model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"]
    )
    return np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])
