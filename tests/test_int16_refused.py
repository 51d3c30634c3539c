"""int16 / uint16 Q/DQ (ONNX Runtime's A16W8 and QInt16 configs) are refused with one line.

TensorRT has no int16 Q/DQ. Giving such a pair an int8 scale over its int16 range is a
re-quantization at a 256x coarser step (the held-out re-measurement saw -0.7 to -2.9 dB, and
-16 dB on a DenseNet with int16 weights), which the quantizer, with its calibration data, does
better: the refusal says how to quantize at int8 instead."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import cli
from qdq_optimizer.errors import InputError
from qdq_optimizer.validate import validate_model
from tests.rules_util import G


def _pair(g: G, x: str, scale: float, zp, name: str) -> str:
    s, z = g.const(np.float32(scale)), g.const(zp)
    qo = g.op("QuantizeLinear", [x, s, z], f"{name}_Q")
    return g.op("DequantizeLinear", [qo, s, z], f"{name}_DQ")


def a16_model(zp) -> onnx.ModelProto:
    """x -> int8 pair -> Conv -> an int16 or uint16 pair -> Conv (int8 weights)."""
    g = G(c=3, hw=5, seed=3)
    y = g.conv(_pair(g, "x", 0.03, np.int8(0), "a"), name="conv0")
    y = g.conv(_pair(g, y, 6.0 / 65535, zp, "r"), name="conv1")
    m = g.model([y], opset=21)
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("zp,name", [(np.int16(0), "int16"), (np.uint16(0), "uint16")])
def test_int16_is_refused_naming_the_node_and_the_fix(zp, name: str) -> None:
    with pytest.raises(InputError) as info:
        validate_model(a16_model(zp))
    msg = str(info.value)
    assert "\n" not in msg and "'r_Q'" in msg and name in msg and "QuantType.QInt8" in msg


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    src, out = tmp_path / "a16.onnx", tmp_path / "out.onnx"
    src.write_bytes(a16_model(np.int16(0)).SerializeToString())
    before = src.read_bytes()
    assert cli.main(["optimize", str(src), str(out), "--rules", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int16" in err[0] and "Traceback" not in err[0]
    assert not out.exists() and src.read_bytes() == before
