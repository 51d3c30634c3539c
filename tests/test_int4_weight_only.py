"""TensorRT's INT4 weight-only GEMM (W4A16, ModelOpt's ``quantize_mode=int4``): a signed INT4
weight DQ with zero zero points, block-wise along the reduction axis, under a float data input.
TensorRT runs it as written, so lint finds no problem in it and optimize leaves it bit-exact;
the forms TensorRT does not run (asymmetric uint4, INT4 under INT8 activations) stay reported."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdq_optimizer.api import lint, optimize
from tests.rules_util import outputs

K, N, BLOCK = 64, 32, 32


def _blocked(w: np.ndarray, axis: int, unsigned: bool = False):
    """INT4 (or uint4 with zero point 8) codes of ``w`` with one scale per BLOCK along ``axis``."""
    moved = np.moveaxis(w, axis, 0)
    blocks = moved.reshape(moved.shape[0] // BLOCK, BLOCK, -1)
    scale = (np.abs(blocks).max(axis=1) / 7).astype(np.float32)  # [K/BLOCK, rest]
    q = np.clip(np.rint(blocks / scale[:, None, :]), -8, 7).reshape(moved.shape)
    q = np.moveaxis(q, 0, axis)
    scale = np.moveaxis(scale.reshape((moved.shape[0] // BLOCK,) + moved.shape[1:]), 0, axis)
    if unsigned:
        return q + 8, scale, np.full(scale.shape, 8)
    return q, scale, None


def _woq_model(
    form: str = "matmul", unsigned: bool = False, int8_data: bool = False
) -> onnx.ModelProto:
    """x [1, 4, K] -> MatMul(x, DQ(int4 W [K, N], blocks along K)) + b, or Gemm(transB=1) with
    W [N, K] blocked along axis 1; optionally the data input behind an int8 Q/DQ."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    axis = 0
    if form == "gemm":
        w, axis = np.ascontiguousarray(w.T), 1
    q, scale, zp = _blocked(w, axis, unsigned)
    wtype = TensorProto.UINT4 if unsigned else TensorProto.INT4
    inits = [
        helper.make_tensor("w_q", wtype, list(q.shape), q.astype(np.int32).reshape(-1).tolist()),
        numpy_helper.from_array(scale, "w_s"),
        numpy_helper.from_array(rng.standard_normal(N).astype(np.float32) * 0.1, "b"),
    ]
    dq_in = ["w_q", "w_s"]
    if zp is not None:
        inits.append(helper.make_tensor("w_z", wtype, list(zp.shape), zp.reshape(-1).tolist()))
        dq_in.append("w_z")
    nodes = [
        helper.make_node("DequantizeLinear", dq_in, ["w"], "w_dq", axis=axis, block_size=BLOCK)
    ]
    x = "x"
    if int8_data:
        inits += [numpy_helper.from_array(np.float32(0.02), "xs")]
        inits += [numpy_helper.from_array(np.int8(0), "xz")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], "x_q")]
        nodes += [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], "x_dq")]
        x = "xd"
    shape, out = [1, 4, K], [1, 4, N]
    if form == "gemm":
        shape, out = [4, K], [4, N]
        nodes.append(helper.make_node("Gemm", [x, "w", "b"], ["y"], "gemm", transB=1))
    else:
        nodes.append(helper.make_node("MatMul", [x, "w"], ["mm"], "matmul"))
        nodes.append(helper.make_node("Add", ["mm", "b"], ["y"], "bias"))
    graph = helper.make_graph(
        nodes,
        "woq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _x(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(1).standard_normal(dims).astype(np.float32)}


@pytest.mark.parametrize("form", ["matmul", "gemm"])
def test_int4_weight_only_gemm_is_a_tensorrt_form(form: str) -> None:
    m = _woq_model(form)
    onnx.checker.check_model(m, full_check=True)
    assert [p for p in lint(m, "tensorrt") if p.severity != "warning"] == []
    out, rep = optimize(m, "tensorrt")
    assert rep.remaining_problems == []
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 1 and {a.name: a.i for a in dq[0].attribute}["block_size"] == BLOCK
    inits = {t.name: t.data_type for t in out.graph.initializer}
    assert inits[dq[0].input[0]] == TensorProto.INT4  # the weight stays INT4, untouched
    np.testing.assert_array_equal(outputs(out, _x(m))[0], outputs(m, _x(m))[0])


def test_forms_tensorrt_does_not_run_stay_reported() -> None:
    # asymmetric uint4 (ONNX Runtime's MatMul 4-bit QDQ default): TensorRT's INT4 is symmetric
    problems = lint(_woq_model(unsigned=True), "tensorrt")
    assert any(p.rule_id == "trt-qdq-type" and "UINT4" in p.message for p in problems), problems
    # INT4 blocked weights under an INT8 data input: TensorRT has no W4A8 INT8 GEMM
    problems = lint(_woq_model(int8_data=True), "tensorrt")
    assert any(p.rule_id == "trt-qdq-type" and "INT4" in p.message for p in problems), problems


def test_malformed_blocked_scales_are_refused_in_one_line(tmp_path) -> None:
    """Blocked scales must have the input's shape with ceil(D / block_size) on the blocked axis.
    ModelOpt's int4 ``awq_clip`` wrote a Gemm weight's [N, ceil(K/B)] scales with axis 0; the
    checker passes such a model and ONNX Runtime fails only when it runs the node, so optimize
    refuses it (exit 2, one line, nothing written) instead of passing it on."""
    import subprocess
    import sys

    from qdq_optimizer.errors import InputError
    from qdq_optimizer.validate import validate_model

    m = _woq_model()
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear")
    next(a for a in dq.attribute if a.name == "axis").i = 1  # scales [2, 32] fit axis 0 only
    onnx.checker.check_model(m, full_check=True)  # the checker does not look
    with pytest.raises(InputError, match=r"blocked scales of shape \[2, 32\].*needs \[64, 1\]"):
        validate_model(m)
    src, dst = tmp_path / "bad.onnx", tmp_path / "out.onnx"
    onnx.save(m, src)
    run = subprocess.run(
        [sys.executable, "-m", "qdq_optimizer", "optimize", str(src), str(dst)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and not dst.exists()
    errors = [line for line in run.stderr.splitlines() if line.startswith("qdqopt: error")]
    assert len(errors) == 1 and "re-export it from the producer" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
