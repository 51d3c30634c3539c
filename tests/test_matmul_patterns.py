"""qdq_optimizer.matmul_patterns: weighted GEMMs in every export form and attention's matmuls.

Graphs are built with onnx.helper (tests/qdq_builders.Builder checks each one with the full ONNX
checker) in the forms the producers write (docs/transformers.md): pytorch-quantization's
``MatMul(DQ(Q(x)), Transpose(DQ(Q(W))))``, int8 initializers, Identity/Reshape on the weight,
Gemm with and without transB; ViT (timm), BERT (scale and mask after BMM1) and YOLO11 C2PSA
(probabilities transposed into BMM2's second input) attention.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from qdq_builders import Builder

from qdq_optimizer.graph import QGraph
from qdq_optimizer.matmul_patterns import (
    MAX_ATTENTION_HOPS,
    MAX_WEIGHT_HOPS,
    attention_matmul,
    is_activation_matmul,
    is_int8_matmul,
    weight_output_axis,
    weight_path,
    weighted_matmul,
)

N_OUT, K_IN = 16, 8


def _graph(b: Builder, out: str) -> QGraph:
    b.output(out)
    return QGraph.from_model(b.build())


def _weight(b: Builder, shape: tuple[int, ...]) -> str:
    return b.const(b.rng.standard_normal(shape).astype(np.float32), "W")


def _wscale(n: int) -> np.ndarray:
    return np.linspace(0.01, 0.02, n, dtype=np.float32)


def _linear_pq(b: Builder, x: str, name: str = "fc") -> str:
    """pytorch-quantization's nn.Linear on a 3-D input: MatMul(DQ(Q(x)), Transpose(DQ(Q(W))))."""
    xd = b.qdq(x, 0.05, name=f"{name}_in")
    w = _weight(b, (N_OUT, K_IN))
    wd = b.dq(b.q(w, _wscale(N_OUT), axis=0, name=f"{name}_wQ"), _wscale(N_OUT), axis=0)
    wt = b.node("Transpose", [wd], name=f"{name}_wT", perm=[1, 0])
    return b.node("MatMul", [xd, wt], name=name)


# ---------------------------------------------------------------- weighted GEMMs
def test_pytorch_quantization_linear_is_a_weighted_gemm():
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    g = _graph(b, _linear_pq(b, x))
    mm = g.node("fc")
    wm = weighted_matmul(g, mm)
    assert wm is not None
    assert wm.data is mm.inputs[0]
    assert wm.weight.quantized and wm.weight.q is not None  # pair form: Q of a float constant
    assert wm.weight.q.name == "fc_wQ"
    assert [n.op for n in wm.weight.through] == ["Transpose"]
    # W is [N, K] with scales on axis 0; the Transpose makes it MatMul's [K, N]: axis 0 is right
    assert weight_output_axis(wm) == 0
    assert not is_activation_matmul(g, mm)
    assert attention_matmul(g, mm) is None


def test_int8_initializer_behind_transpose():
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    xd = b.qdq(x, 0.05)
    w8 = b.const(b.rng.integers(-127, 128, (N_OUT, K_IN), dtype=np.int8), "W8")
    wt = b.node("Transpose", [b.dq(w8, _wscale(N_OUT), axis=0)], name="wT")  # default perm
    g = _graph(b, b.node("MatMul", [xd, wt], name="fc"))
    wm = weighted_matmul(g, g.node("fc"))
    assert wm is not None and wm.weight.quantized and wm.weight.q is None
    assert wm.weight.source.name == w8
    assert weight_output_axis(wm) == 0  # a Transpose without perm reverses the axes


def test_identity_and_reshape_on_the_weight():
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    w = _weight(b, (K_IN * N_OUT,))
    wd = b.dq(b.q(w, 0.01), 0.01)
    wi = b.node("Identity", [wd], name="wI")
    shape = b.const(np.array([K_IN, N_OUT], dtype=np.int64), "shape")
    wr = b.node("Reshape", [wi, shape], name="wR")
    g = _graph(b, b.node("MatMul", [b.qdq(x, 0.05), wr], name="fc"))
    wm = weighted_matmul(g, g.node("fc"))
    assert wm is not None
    assert [n.name for n in wm.weight.through] == ["wI", "wR"]  # data-flow order
    assert weight_output_axis(wm) is None  # a Reshape hides where the output channels went


def test_reshape_with_computed_shape_is_not_a_constant_weight():
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    y = b.input("y", [K_IN, N_OUT])
    w = _weight(b, (K_IN * N_OUT,))
    shape = b.node("Shape", [y], name="shape_of_y")
    wr = b.node("Reshape", [b.dq(b.q(w, 0.01), 0.01), shape], name="wR")
    mm = b.node("MatMul", [b.qdq(x, 0.05), wr], name="fc")
    # shape inference cannot see through the computed shape: declare the output's type here
    graph = helper.make_graph(
        b.nodes,
        "t",
        b.inputs,
        [helper.make_tensor_value_info(mm, TensorProto.FLOAT, [1, 4, "n"])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    g = QGraph.from_model(model)
    assert weighted_matmul(g, g.node("fc")) is None
    assert weight_path(g, g.node("fc").inputs[1]) is None


@pytest.mark.parametrize(
    ("trans_b", "shape", "axis"), [(1, (N_OUT, K_IN), 0), (0, (K_IN, N_OUT), 1)]
)
def test_gemm_output_channel_axis_follows_trans_b(trans_b, shape, axis):
    b = Builder()
    x = b.input("x", [2, K_IN])
    w = _weight(b, shape)
    n = shape[axis]
    wd = b.dq(b.q(w, _wscale(n), axis=axis), _wscale(n), axis=axis)
    bias = b.const(np.zeros(N_OUT, dtype=np.float32), "bias")
    g = _graph(b, b.node("Gemm", [b.qdq(x, 0.05), wd, bias], name="fc", transB=trans_b))
    wm = weighted_matmul(g, g.node("fc"))
    assert wm is not None and wm.weight.through == ()
    assert weight_output_axis(wm) == axis


def test_plain_matmul_weight_scales_on_last_axis_and_float_weight():
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    wd = b.dq(b.q(_weight(b, (K_IN, N_OUT)), _wscale(N_OUT), axis=1), _wscale(N_OUT), axis=1)
    y = b.node("MatMul", [b.qdq(x, 0.05), wd], name="fc")
    wf = b.node("Transpose", [_weight(b, (N_OUT, N_OUT))], name="wfT", perm=[1, 0])
    g = _graph(b, b.node("MatMul", [y, wf], name="fc_float"))
    wm = weighted_matmul(g, g.node("fc"))
    assert wm is not None and weight_output_axis(wm) == 1
    wf_m = weighted_matmul(g, g.node("fc_float"))  # float (or dequantized) weight: still weighted
    assert wf_m is not None and not wf_m.weight.quantized
    assert [n.op for n in wf_m.weight.through] == ["Transpose"]


def test_output_axis_maps_back_through_a_three_axis_transpose():
    """Batched weight stored [N, B, K], Transpose perm [1, 2, 0] -> MatMul's [B, K, N]: the output
    channels (the op's last axis) are stored axis perm[2] = 0, not perm.index(2) = 1."""
    b = Builder()
    x = b.input("x", [2, 4, K_IN])
    wd = b.dq(b.q(_weight(b, (N_OUT, 2, K_IN)), _wscale(N_OUT), axis=0), _wscale(N_OUT), axis=0)
    wt = b.node("Transpose", [wd], name="wT", perm=[1, 2, 0])
    g = _graph(b, b.node("MatMul", [b.qdq(x, 0.05), wt], name="bmm_w"))
    wm = weighted_matmul(g, g.node("bmm_w"))
    assert wm is not None and weight_output_axis(wm) == 0


@pytest.mark.parametrize("hops", [MAX_WEIGHT_HOPS, MAX_WEIGHT_HOPS + 1])
def test_weight_path_is_bounded(hops):
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    w = b.dq(b.q(_weight(b, (K_IN, N_OUT)), 0.01), 0.01)
    for i in range(hops):
        w = b.node("Identity", [w], name=f"id{i}")
    g = _graph(b, b.node("MatMul", [b.qdq(x, 0.05), w], name="fc"))
    assert (weighted_matmul(g, g.node("fc")) is not None) == (hops <= MAX_WEIGHT_HOPS)


def test_other_ops_on_the_weight_path_are_not_folded():
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    w = b.dq(b.q(_weight(b, (K_IN, N_OUT)), 0.01), 0.01)
    w = b.node("Mul", [w, b.const(np.float32(2.0), "two")], name="wMul")
    g = _graph(b, b.node("MatMul", [b.qdq(x, 0.05), w], name="fc"))
    assert weighted_matmul(g, g.node("fc")) is None


def test_constant_times_constant_is_not_a_gemm():
    b = Builder()
    a = _weight(b, (4, K_IN))
    g = _graph(b, b.node("MatMul", [a, _weight(b, (K_IN, N_OUT))], name="folded"))
    assert weighted_matmul(g, g.node("folded")) is None
    assert not is_activation_matmul(g, g.node("folded"))


# ---------------------------------------------------------------- activation x activation
def test_activation_pair_behind_transpose_is_not_a_weight():
    """MatMul(DQ(Q(x)), Transpose(DQ(Q(y)))) with y an activation: the pytorch-quantization shape,
    but both operands are activations (a BMM), so it must not be taken for a Linear."""
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    y = b.input("y", [1, N_OUT, K_IN])
    yt = b.node("Transpose", [b.qdq(y, 0.05)], name="yT", perm=[0, 2, 1])
    g = _graph(b, b.node("MatMul", [b.qdq(x, 0.05), yt], name="bmm"))
    mm = g.node("bmm")
    assert weighted_matmul(g, mm) is None
    assert is_activation_matmul(g, mm)
    assert is_int8_matmul(g, mm)  # DQ forward through the Transpose: TensorRT sees INT8
    assert attention_matmul(g, mm) is None  # no Softmax anywhere


def _heads(b: Builder, name: str, shape: list[int]) -> str:
    return b.input(name, shape)


def test_vit_attention_both_bmms_quantized():
    """timm ViT: q * scale before BMM1, Q/DQ on all four BMM inputs (ModelOpt/ORT placement)."""
    b = Builder()
    q, k, v = (_heads(b, n, [1, 2, 4, 8]) for n in ("q", "k", "v"))
    qs = b.node("Mul", [q, b.const(np.float32(8**-0.5), "scale")], name="q_scale")
    kt = b.node("Transpose", [k], name="kT", perm=[0, 1, 3, 2])
    s = b.node("MatMul", [b.qdq(qs, 0.05), b.qdq(kt, 0.05)], name="bmm1")
    p = b.node("Softmax", [s], name="softmax", axis=-1)
    g = _graph(b, b.node("MatMul", [b.qdq(p, 1 / 127), b.qdq(v, 0.05)], name="bmm2"))
    a1, a2 = attention_matmul(g, g.node("bmm1")), attention_matmul(g, g.node("bmm2"))
    assert a1 is not None and a1.role == "qk" and a1.softmax.name == "softmax"
    assert a1.between == () and not a1.scaled_after
    assert a2 is not None and a2.role == "pv" and a2.probs_input == 0 and a2.between == ()
    assert is_int8_matmul(g, g.node("bmm1")) and is_int8_matmul(g, g.node("bmm2"))


def test_bert_attention_scale_and_mask_after_bmm1():
    """BERT: scores / sqrt(d) + mask after BMM1; softmax output left float (ORT-style QDQ on the
    BMM1 inputs only): BMM2 is not INT8."""
    b = Builder()
    q, k, v = (_heads(b, n, [1, 2, 4, 8]) for n in ("q", "k", "v"))
    mask = b.input("mask", [1, 1, 1, 4])
    kt = b.node("Transpose", [k], name="kT", perm=[0, 1, 3, 2])
    s = b.node("MatMul", [b.qdq(q, 0.05), b.qdq(kt, 0.05)], name="bmm1")
    s = b.node("Div", [s, b.const(np.float32(8**0.5), "sqrt_d")], name="div")
    s = b.node("Add", [s, mask], name="mask_add")
    p = b.node("Softmax", [s], name="softmax", axis=-1)
    g = _graph(b, b.node("MatMul", [p, b.qdq(v, 0.05)], name="bmm2"))
    a1 = attention_matmul(g, g.node("bmm1"))
    assert a1 is not None and a1.role == "qk"
    assert [n.name for n in a1.between] == ["div", "mask_add"] and a1.scaled_after
    a2 = attention_matmul(g, g.node("bmm2"))
    assert a2 is not None and a2.role == "pv" and a2.probs_input == 0
    assert is_int8_matmul(g, g.node("bmm1")) and not is_int8_matmul(g, g.node("bmm2"))


def test_c2psa_attention_probabilities_as_second_input():
    """YOLO11 C2PSA: attn = (q^T @ k) * scale; out = v @ attn^T (softmax transposed, input 1)."""
    b = Builder()
    q, k = (_heads(b, n, [1, 2, 4, 16]) for n in ("q", "k"))
    v = _heads(b, "v", [1, 2, 8, 16])
    qt = b.node("Transpose", [b.qdq(q, 0.05)], name="qT", perm=[0, 1, 3, 2])
    s = b.node("MatMul", [qt, b.qdq(k, 0.05)], name="bmm1")
    s = b.node("Mul", [s, b.const(np.float32(0.5), "scale")], name="scale_mul")
    p = b.node("Softmax", [s], name="softmax", axis=-1)
    pt = b.node("Transpose", [b.qdq(p, 1 / 127)], name="pT", perm=[0, 1, 3, 2])
    g = _graph(b, b.node("MatMul", [b.qdq(v, 0.05), pt], name="bmm2"))
    a1, a2 = attention_matmul(g, g.node("bmm1")), attention_matmul(g, g.node("bmm2"))
    assert a1 is not None and a1.role == "qk" and a1.scaled_after
    assert a2 is not None and a2.role == "pv" and a2.probs_input == 1
    assert [n.name for n in a2.between] == ["pT"]
    assert is_int8_matmul(g, g.node("bmm1")) and is_int8_matmul(g, g.node("bmm2"))


def test_weighted_matmul_after_softmax_is_not_attention():
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    p = b.node("Softmax", [x], name="softmax", axis=-1)
    wd = b.dq(b.q(_weight(b, (K_IN, N_OUT)), 0.01), 0.01)
    g = _graph(b, b.node("MatMul", [b.qdq(p, 1 / 127), wd], name="head"))
    assert weighted_matmul(g, g.node("head")) is not None
    assert attention_matmul(g, g.node("head")) is None


@pytest.mark.parametrize("hops", [MAX_ATTENTION_HOPS, MAX_ATTENTION_HOPS + 1])
def test_attention_walks_are_bounded(hops):
    b = Builder()
    q, k, v = (_heads(b, n, [1, 2, 4, 4]) for n in ("q", "k", "v"))
    s = b.node("MatMul", [q, k], name="bmm1")
    for i in range(hops):
        s = b.node("Identity", [s], name=f"s{i}")
    p = b.node("Softmax", [s], name="softmax", axis=-1)
    for i in range(hops):
        p = b.node("Identity", [p], name=f"p{i}")
    g = _graph(b, b.node("MatMul", [p, v], name="bmm2"))
    found = hops <= MAX_ATTENTION_HOPS
    assert (attention_matmul(g, g.node("bmm1")) is not None) == found
    assert (attention_matmul(g, g.node("bmm2")) is not None) == found


def test_predicates_do_not_edit_the_graph():
    b = Builder()
    x = b.input("x", [1, 4, K_IN])
    g = _graph(b, _linear_pq(b, x))
    before = [(n.op, n.name, [t.name for t in n.inputs]) for n in g.nodes]
    for n in g.nodes:
        weighted_matmul(g, n), attention_matmul(g, n), is_activation_matmul(g, n)
    assert [(n.op, n.name, [t.name for t in n.inputs]) for n in g.nodes] == before
