"""int16 / uint16 Q/DQ (ONNX Runtime's A16W8 and QInt16 configs) become TensorRT's symmetric int8.

TensorRT has no int16 Q/DQ; before this, the pairs passed through and the output failed its own
lint (`trt-qdq-type`), found by the held-out corpus re-measurement (ORT `activation_type=QInt16`).
They convert like uint8 and asymmetric int8: the new scale covers the whole range the pair
represented, the clamp a zero range edge implied comes back as a Clip, int16 weights are
re-quantized int8 per output channel from their float values."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.testing.corpus import model_error
from tests.rules_util import G, outputs


def _pair(g: G, x: str, scale: float, zp, name: str) -> str:
    s, z = g.const(np.float32(scale)), g.const(zp)
    qo = g.op("QuantizeLinear", [x, s, z], f"{name}_Q")
    return g.op("DequantizeLinear", [qo, s, z], f"{name}_DQ")


def _int16_weight(g: G, cout: int, cin: int) -> tuple[str, np.ndarray]:
    w = (g.rng.standard_normal((cout, cin, 1, 1)) * 0.3).astype(np.float32)
    s = (np.abs(w).reshape(cout, -1).max(1) / 32767).astype(np.float32)
    wq = np.rint(w / s[:, None, None, None]).astype(np.int16)
    dq = g.op(
        "DequantizeLinear", [g.const(wq), g.const(s), g.const(np.zeros(cout, np.int16))], axis=0
    )
    return dq, wq.astype(np.float32) * s[:, None, None, None]


def a16_model() -> tuple[onnx.ModelProto, float, float, np.ndarray]:
    """x -> int16 pair -> Conv (int16 weight) -> uint16 pair with zero point 0 (the Relu ORT
    deleted) -> Conv (int8 weight)."""
    g = G(c=3, hw=5, seed=3)
    s16, s_u16 = 4.0 / 32767, 6.0 / 65535
    w, w_float = _int16_weight(g, 3, 3)
    b = g.const(np.zeros(3, np.float32))
    y = g.op("Conv", [_pair(g, "x", s16, np.int16(0), "a"), w, b], "conv0", kernel_shape=[1, 1])
    y = g.conv(_pair(g, y, s_u16, np.uint16(0), "r"), name="conv1")
    m = g.model([y], opset=21)
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m, s16, s_u16, w_float


def _params(model: onnx.ModelProto, name: str):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    n = next(n for n in model.graph.node if n.name == name)
    return inits[n.input[1]], inits[n.input[2]]


def test_int16_pairs_become_symmetric_int8() -> None:
    m, s16, s_u16, w_float = a16_model()
    out, rep = optimize(m, "tensorrt")
    assert model_error(out) is None
    assert lint(out, "tensorrt") == [] and rep.remaining_problems == []
    for n in out.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _, zp = _params(out, n.name)
            assert zp.dtype == np.int8 and not zp.any(), n.name
    # the int16 pair keeps its whole range [-32768 s, 32767 s]: scale 32768 s / 127
    scale, _ = _params(out, "a_Q")
    assert np.isclose(float(scale), 32768 * s16 / 127, rtol=1e-6)
    # the uint16 range [0, 65535 s] stood for a deleted Relu: a Clip(0, 65535 s) comes back
    clips = [n for n in out.graph.node if n.op_type == "Clip"]
    assert len(clips) == 1
    lo = numpy_helper.to_array(
        next(t for t in out.graph.initializer if t.name == clips[0].input[1])
    )
    assert float(lo) == 0.0
    scale, _ = _params(out, "r_Q")
    assert np.isclose(float(scale), 65535 * s_u16 / 127, rtol=1e-6)
    # the int16 weight is int8 per output channel, within half a step of its float values
    conv0 = next(n for n in out.graph.node if n.name == "conv0")
    wdq = next(n for n in out.graph.node if conv0.input[1] in n.output)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    wq, ws = inits[wdq.input[0]], inits[wdq.input[1]]
    assert wq.dtype == np.int8 and ws.shape == (3,)
    err = np.abs(wq.astype(np.float32) * ws[:, None, None, None] - w_float)
    assert np.all(err <= ws[:, None, None, None] / 2 + 1e-7)
    assert any("symmetric-int8" in w for w in rep.warnings)


def test_int16_conversion_moves_the_output_by_int8_rounding_only() -> None:
    m, *_ = a16_model()
    out, _ = optimize(m, "tensorrt")
    x = {"x": np.random.default_rng(0).uniform(-3, 3, (1, 3, 5, 5)).astype(np.float32)}
    (a,), (b,) = outputs(m, x), outputs(out, x)
    # two int8 activation grids (steps 0.032, 0.047) and int8 weights: a few % of the signal
    assert np.abs(a).max() > 0.3 and np.abs(a - b).max() < 0.05 * np.abs(a).max()
    again, rep = optimize(out, "tensorrt")
    assert rep.total_changes == 0  # idempotent
