"""validate_model: one test per refusal, the pass-through warnings, and linear speed."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_optimizer.errors import InputError
from qdq_optimizer.validate import validate_model

try:
    from hardening_util import chain_model, init, node, qdq_conv_model, set_init
except ImportError:  # tests/ imported as a package
    from tests.hardening_util import chain_model, init, node, qdq_conv_model, set_init


def _refused(model: onnx.ModelProto, *needles: str, **kw) -> str:
    with pytest.raises(InputError) as info:
        validate_model(model, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_valid_model_has_no_warnings() -> None:
    assert validate_model(qdq_conv_model()) == []


def test_opset_below_13() -> None:
    m = qdq_conv_model()
    m.opset_import[0].version = 11
    _refused(m, "opset 11")


def test_no_default_opset() -> None:
    m = qdq_conv_model()
    m.opset_import[0].domain = "com.example"
    _refused(m, "opset")


def test_two_nodes_produce_one_tensor() -> None:
    m = qdq_conv_model()
    node(m, "relu0").output[0] = "conv"
    _refused(m, "'conv'", "'conv0'", "'relu0'", "produced twice")


def test_node_output_shadows_initializer() -> None:
    m = qdq_conv_model()
    node(m, "relu0").output[0] = "bias"
    node(m, "pool0").input[0] = "bias"
    _refused(m, "'relu0'", "shadows an initializer")


def test_duplicate_initializer() -> None:
    m = qdq_conv_model()
    m.graph.initializer.append(init(m, "bias"))
    _refused(m, "'bias'", "twice")


def test_cycle() -> None:
    m = qdq_conv_model()
    # relu reads the pool output: conv0 -> relu0 -> pool0 -> relu0
    node(m, "relu0").input[0] = "pool"
    _refused(m, "cycle", "relu0", "pool0")


def test_self_loop() -> None:
    m = qdq_conv_model()
    node(m, "relu0").input[0] = "relu"
    _refused(m, "cycle", "relu0")


def test_dangling_input() -> None:
    m = qdq_conv_model()
    node(m, "pool0").input[0] = "nowhere"
    _refused(m, "'pool0'", "'nowhere'", "dangling")


def test_dangling_graph_output() -> None:
    m = qdq_conv_model()
    m.graph.output[0].name = "ghost"
    _refused(m, "'ghost'")


def test_missing_required_attribute() -> None:
    m = qdq_conv_model()
    m.graph.node.append(helper.make_node("Cast", ["outputs"], ["cast_out"], name="cast0"))
    _refused(m, "'cast0'", "Cast", "'to'")


def test_wrong_input_count() -> None:
    m = qdq_conv_model()
    del node(m, "conv0").input[1:]
    _refused(m, "'conv0'", "input size")


def test_non_constant_scale() -> None:
    m = qdq_conv_model()
    m.graph.input.append(helper.make_tensor_value_info("dyn_scale", TensorProto.FLOAT, []))
    node(m, "q_mid").input[1] = "dyn_scale"
    _refused(m, "'q_mid'", "non-constant scale")


def test_scale_from_constant_node_is_fine() -> None:
    m = qdq_conv_model()
    c = helper.make_node("Constant", [], ["c_scale"], name="c0", value_float=0.1)
    m.graph.node.insert(0, c)
    node(m, "q_mid").input[1] = "c_scale"
    node(m, "dq_mid").input[1] = "c_scale"
    assert validate_model(m) == []


@pytest.mark.parametrize(
    ("value", "needle"),
    [(0.0, "zero or negative"), (-0.1, "zero or negative"), (np.nan, "NaN"), (np.inf, "infinite")],
)
def test_bad_scale_values(value: float, needle: str) -> None:
    m = qdq_conv_model()
    set_init(m, "mid_scale", np.array(value, np.float32))
    _refused(m, "'q_mid'", needle)


def test_bad_per_channel_scale_value() -> None:
    m = qdq_conv_model()
    s = numpy_helper.to_array(init(m, "w_scale")).copy()
    s[2] = 0
    set_init(m, "w_scale", s)
    _refused(m, "'dq_w'", "zero or negative")


def test_integer_scale() -> None:
    m = qdq_conv_model()
    set_init(m, "mid_scale", np.array(1, np.int32))
    _refused(m, "'q_mid'", "not float")


def test_asymmetric_int8_accepted_without_warning() -> None:
    """The symmetric-int8 rule converts it (issue 10): nothing to refuse or warn about."""
    m = qdq_conv_model()
    set_init(m, "mid_zp", np.array(3, np.int8))
    assert validate_model(m) == []


def test_uint8_accepted_without_warning() -> None:
    m = qdq_conv_model()
    set_init(m, "mid_zp", np.array(128, np.uint8))
    assert validate_model(m) == []


@pytest.mark.parametrize("dtype", [TensorProto.INT16, TensorProto.UINT16])
def test_int16_refused(dtype: int) -> None:
    """int16/uint16 (ONNX Runtime's A16 configs): TensorRT has no int16 Q/DQ and an int8 scale
    over the int16 range is a re-quantization, so the refusal says how to quantize at int8."""
    m = qdq_conv_model()
    m.opset_import[0].version = 21
    init(m, "mid_zp").CopyFrom(helper.make_tensor("mid_zp", dtype, [], [0]))
    _refused(m, "'q_mid'", "int16", "QuantType.QInt8")


def test_uint8_without_zero_point() -> None:
    m = qdq_conv_model()
    del node(m, "q_mid").input[2]
    del node(m, "dq_mid").input[2]
    assert validate_model(m) == []


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (TensorProto.INT4, "int4"),
        (TensorProto.UINT4, "uint4"),
    ],
)
def test_other_types_pass_through_with_warning(dtype: int, name: str) -> None:
    m = qdq_conv_model()
    m.opset_import[0].version = 21
    zp = helper.make_tensor("mid_zp", dtype, [], [0])
    init(m, "mid_zp").CopyFrom(zp)
    warnings = validate_model(m)
    assert len(warnings) == 2 and all(name in w and "untouched" in w for w in warnings), warnings


def test_per_axis_invalid_axis() -> None:
    m = qdq_conv_model()
    node(m, "dq_w").attribute[0].i = 4
    _refused(m, "'dq_w'", "axis 4")


def test_per_axis_wrong_length() -> None:
    m = qdq_conv_model()
    node(m, "dq_w").attribute[0].i = 1  # 3 input channels, 4 scales
    _refused(m, "'dq_w'", "4 per-axis scales", "is 3")


def test_per_axis_zero_point_shape_mismatch() -> None:
    m = qdq_conv_model()
    set_init(m, "w_zp", np.zeros(3, np.int8))
    _refused(m, "'dq_w'", "zero point shape")


def test_corrupted_initializer_data() -> None:
    m = qdq_conv_model()
    t = init(m, "w_q")
    t.raw_data = t.raw_data[:-5]
    _refused(m, "'w_q'", "bytes")


def test_unknown_ops_pass_through() -> None:
    m = qdq_conv_model()
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    m.graph.node.append(
        helper.make_node("MyPlugin", ["outputs"], ["p"], name="plugin", domain="com.example", k=3)
    )
    m.graph.node.append(helper.make_node("NotAnOnnxOp", ["p"], ["p2"], name="mystery"))
    assert validate_model(m) == []


def test_deep_chain_has_no_recursion() -> None:
    """20k nodes: 20x the default recursion limit (100k: tests/test_big_graph.py)."""
    m = chain_model(20_000)
    start = time.perf_counter()
    assert validate_model(m) == []
    assert time.perf_counter() - start < 10
    # a cycle deep in the chain is still found (iteratively) and named
    node(m, "relu5").input[0] = "t19999"
    _refused(m, "cycle")


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2], ids=str)
def test_fp8_refused(dtype: int) -> None:
    """FP8 (ModelOpt quantize_mode='fp8'): TensorRT runs it, but the rules and lint are INT8's."""
    m = qdq_conv_model()
    m.opset_import[0].version = 21
    init(m, "mid_zp").CopyFrom(helper.make_tensor("mid_zp", dtype, [], [0]))
    _refused(m, "'q_mid'", "FP8", "int8")


@pytest.mark.parametrize("dtype", [TensorProto.INT4], ids=str)
def test_unhandled_qdq_really_pass_through_untouched(dtype: int) -> None:
    """The warning promises 'passed through untouched': the optimizer must keep those nodes."""
    from qdq_optimizer.api import optimize

    m = qdq_conv_model()
    m.opset_import[0].version = 21
    init(m, "mid_zp").CopyFrom(helper.make_tensor("mid_zp", dtype, [], [0]))
    assert len(validate_model(m)) == 2
    out, _ = optimize(m, "tensorrt")
    kept = {n.name: (list(n.input), list(n.output)) for n in out.graph.node}
    for name in ("q_mid", "dq_mid"):
        assert kept.get(name) == (list(node(m, name).input), list(node(m, name).output)), name


def test_op_from_a_domain_not_imported() -> None:
    m = qdq_conv_model()
    m.graph.node.append(
        helper.make_node("LabelEncoder", ["outputs"], ["enc"], name="enc", domain="ai.onnx.ml")
    )
    _refused(m, "'enc'", "ai.onnx.ml", "not in the model's opsets")


def test_op_newer_than_the_opset() -> None:
    m = qdq_conv_model()
    m.graph.node.append(helper.make_node("Gelu", ["outputs"], ["g"], name="gelu0"))  # opset 20
    _refused(m, "'gelu0'", "does not exist in opset 13")


def _qoperator_models() -> dict[str, onnx.ModelProto]:
    """ONNX Runtime's two non-Q/DQ formats, as quantize_static(quant_format=QOperator) and
    quantize_dynamic write them: a QLinearConv, and DynamicQuantizeLinear + MatMulInteger."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    qop = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
            helper.make_node(
                "QLinearConv", ["xq", "s", "z", "w", "s", "z", "s", "z"], ["yq"], name="qconv"
            ),
            helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"], name="dq"),
        ],
        "qop",
        [x],
        [y],
        [c("s", np.float32(0.1)), c("z", np.int8(0)), c("w", np.ones((2, 2, 1, 1), np.int8))],
    )
    m = helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 4])
    dyn = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["m"], ["mq", "ms", "mz"], name="dql"),
            helper.make_node("MatMulInteger", ["mq", "w", "mz", "wz"], ["acc"], name="mmi"),
            helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT, name="cast"),
        ],
        "dyn",
        [m],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [c("w", np.ones((4, 3), np.uint8)), c("wz", np.uint8(0))],
    )
    return {
        name: helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        for name, g in (("qconv", qop), ("dql", dyn))
    }


@pytest.mark.parametrize("name", ["qconv", "dql"])
def test_qoperator_format_refused(name: str) -> None:
    """Integer-op quantization is not Q/DQ: one line naming the node and the producer's fix
    (found by the held-out re-measurement: an ORT QOperator graph came out exit 0, its
    QLinearConvs untouched and unreported)."""
    model = _qoperator_models()[name]
    onnx.checker.check_model(model)
    _refused(model, f"'{name}'", "QOperator", "QuantFormat.QDQ")
