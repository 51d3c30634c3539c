"""ONNX Runtime's contrib Q/DQ (``com.microsoft`` QuantizeLinear/DequantizeLinear, written by
``quantize_static(extra_options={"UseQDQContribOps": True})`` and by its 16/4-bit path below
opset 21) are the ONNX operators under another domain: ``optimize`` moves them to the default
domain and then treats the model exactly as the default-domain one ONNX Runtime writes without
that option. Before, the rules rewrote them in their domain and validation skipped them, so an
int16 contrib model passed where its default-domain twin is refused."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ort_quant import float_cnn, ort_quantize, outputs, photos

import cli
from qdq_optimizer.api import lint, optimize
from qdq_optimizer.contrib_qdq import CONTRIB_DOMAIN, to_default_domain
from qdq_optimizer.errors import InputError

MODES = ("int8-asym", "uint8", "int8-sym")


@cache
def calib() -> np.ndarray:
    return photos("calib", 8)


@cache
def quantized(mode: str, contrib: bool) -> onnx.ModelProto:
    extra = {"UseQDQContribOps": True} if contrib else {}
    return ort_quantize(float_cnn("relu"), mode, calib(), **extra)


def _domains(model: onnx.ModelProto) -> set[str]:
    return {n.domain for n in model.graph.node if n.op_type.endswith("Linear")}


@pytest.mark.parametrize("mode", MODES)
def test_contrib_model_optimizes_as_its_default_domain_twin(mode: str) -> None:
    contrib, default = quantized(mode, True), quantized(mode, False)
    assert _domains(contrib) == {CONTRIB_DOMAIN} and _domains(default) == {""}  # as produced
    out, report = optimize(contrib, "tensorrt")
    twin, _ = optimize(default, "tensorrt")
    assert _domains(out) == {""}
    onnx.checker.check_model(out, full_check=True)
    x = photos("val", 3)
    np.testing.assert_array_equal(outputs(out, x), outputs(twin, x))  # bit for bit
    assert lint(out) == []
    assert any(CONTRIB_DOMAIN in w and "default domain" in w for w in report.warnings)


def test_lint_reads_contrib_pairs_as_pairs() -> None:
    """Lint of the input reports the same problems for both spellings."""
    got = sorted(p.rule_id for p in lint(quantized("uint8", True)))
    assert got and got == sorted(p.rule_id for p in lint(quantized("uint8", False)))


def test_int16_contrib_is_refused_like_default_domain_int16(tmp_path, capsys) -> None:
    a16 = ort_quantize(
        float_cnn("relu"), "int8-asym", calib(), activation_type="QInt16", UseQDQContribOps=True
    )
    assert CONTRIB_DOMAIN in _domains(a16)
    with pytest.raises(InputError, match="int16 quantization"):
        optimize(a16, "tensorrt")
    src, dst = tmp_path / "a16.onnx", tmp_path / "out.onnx"
    src.write_bytes(a16.SerializeToString())
    assert cli.main(["optimize", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int16" in err[0] and not dst.exists()


def _contrib_pair(scale: np.ndarray, opset: int) -> onnx.ModelProto:
    """x -> com.microsoft Q/DQ (int8, ``scale``'s float type) -> y."""
    x_type = helper.np_dtype_to_tensor_dtype(scale.dtype)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(np.int8(0), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], "q0", domain=CONTRIB_DOMAIN),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], "dq0", domain=CONTRIB_DOMAIN),
    ]
    g = helper.make_graph(
        nodes,
        "pair",
        [helper.make_tensor_value_info("x", x_type, [1, 4])],
        [helper.make_tensor_value_info("y", x_type, [1, 4])],
        inits,
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB_DOMAIN, 1)]
    return helper.make_model(g, opset_imports=imports)


@pytest.mark.parametrize(
    "dtype,opset,moved",
    [(np.float32, 13, True), (np.float16, 13, False), (np.float16, 19, True)],
)
def test_moved_only_where_the_default_opset_has_the_types(dtype, opset: int, moved: bool) -> None:
    """float16 scales exist in the default domain from opset 19: below it the pair stays."""
    m = _contrib_pair(np.asarray(0.05, dtype), opset)
    out, note = to_default_domain(m)
    assert _domains(out) == ({""} if moved else {CONTRIB_DOMAIN})
    assert (note is not None) == moved
    if moved:
        onnx.checker.check_model(out, full_check=True)


def test_default_domain_models_come_back_unchanged() -> None:
    m = quantized("int8-asym", False)
    before = m.SerializeToString()
    out, note = to_default_domain(m)
    assert note is None and out.SerializeToString() == before
    assert TensorProto.INT8 in {t.data_type for t in m.graph.initializer}
