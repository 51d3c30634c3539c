"""testing.symmetric_cost: the conversion to symmetric int8 measured pair by pair, with the rule's
own code (the same pairs, parameters and clamps as ``symmetric-int8``), each pair alone changing
only that pair; on small ONNX Runtime-quantized CNNs scored against their float model."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from ort_quant import float_cnn, ort_quantize, photos

from qdq_optimizer.api import optimize
from qdq_optimizer.testing.symmetric_cost import (
    calibration_judged_factors,
    conversion_costs,
    convert,
    convertible_pairs,
    least_error_factors,
    rescale_pairs,
)


@cache
def quantized(act: str, mode: str) -> onnx.ModelProto:
    return ort_quantize(float_cnn(act), mode, photos("calib"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("symcost")
    onnx.save(float_cnn("relu"), d / "float.onnx")
    np.savez(d / "val.npz", x=photos("val", 4))
    return {"reference": d / "float.onnx", "inputs": d / "val.npz"}


def _activation_qparams(model: onnx.ModelProto) -> dict[str, tuple]:
    """Q input tensor -> (scale, zero point, zero point type) of each activation Q."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            zp = inits[n.input[2]]
            out[n.name] = (float(inits[n.input[1]]), int(zp), zp.dtype)
    return out


def test_all_converted_is_what_the_rule_does():
    q = quantized("relu", "uint8")
    ours = _activation_qparams(convert(q))
    assert all(dt == np.uint8 for _, _, dt in _activation_qparams(q).values())
    from qdq_optimizer.guard import without
    from qdq_optimizer.ruleset import load_ruleset

    # shift-relu-range (run last) halves the scale of the [0, a] pairs it re-centres
    rules = without(load_ruleset("tensorrt"), ["shift-relu-range"])
    full, report = optimize(q, rules, lint_result=False)
    theirs = _activation_qparams(full)
    assert ours and all(dt == np.int8 and zp == 0 for _, zp, dt in ours.values())
    for name, params in ours.items():  # the rule's scales (pairs a later rule moved aside)
        if name in theirs:
            assert params[0] == pytest.approx(theirs[name][0], rel=1e-6), name
    converted = [c for r in report.results if r.rule_id == "symmetric-int8" for c in r.changes]
    pairs = convertible_pairs(q)
    assert len(pairs) == sum("weight" not in c.detail.split("[")[0] for c in converted)


def test_each_pair_alone_changes_only_that_pair():
    q = quantized("relu", "uint8")
    before = _activation_qparams(q)
    for index, name, _detail, half in convertible_pairs(q):
        after = _activation_qparams(convert(q, only=index))
        changed = {n for n in before if after.get(n) != before[n]}
        assert changed == {name}
        assert after[name][2] == np.int8
        assert half == ("[0," in _detail)  # a uint8 [0, a] range keeps half its codes


def test_half_codes_where_the_zero_point_is_at_the_range_edge():
    flags = {name: half for _, name, _, half in convertible_pairs(quantized("relu", "uint8"))}
    assert all(flags[f"act{i}_QuantizeLinear"] for i in range(3))  # ORT-deleted Relus
    assert not flags["conv3_QuantizeLinear"]  # the head's [-1.2, 3.2]: the codes stay


def test_half_codes_only_for_ranges_with_an_edge_at_zero():
    q = quantized("hardswish", "int8-asym")  # HardSwish ranges start below 0: full codes
    flags = {name: half for _, name, _, half in convertible_pairs(q)}
    assert flags and not all(flags.values())
    assert flags["x_QuantizeLinear"]  # the [0, 1] image input


def test_costs_are_measured_on_the_outputs(files):
    q = quantized("relu", "uint8")
    c = conversion_costs(q, files["reference"], files["inputs"])
    assert len(c.pairs) == len(convertible_pairs(q)) and c.weights > 0
    # uint8 [0, a] -> int8: half the codes on four pairs; the output loses, each pair alone less
    assert c.cost_db < -0.3, c
    assert all(c.sqnr_all_db <= p.sqnr_db < c.sqnr_input_db + 0.1 for p in c.pairs), c


def test_rescale_pairs_moves_only_the_named_pair():
    converted = convert(quantized("relu", "uint8"))
    before = _activation_qparams(converted)
    after = _activation_qparams(rescale_pairs(converted, {"act1_QuantizeLinear": 0.5}))
    assert after["act1_QuantizeLinear"][0] == pytest.approx(before["act1_QuantizeLinear"][0] / 2)
    assert {n: p for n, p in after.items() if n != "act1_QuantizeLinear"} == {
        n: p for n, p in before.items() if n != "act1_QuantizeLinear"
    }
    x = {"x": photos("val", 1)}
    from qdq_optimizer.runtime import run

    run(rescale_pairs(converted, {"act1_QuantizeLinear": 0.5}), x)  # Q and its DQ still agree


def test_scale_alternatives_use_the_calibration_samples(tmp_path):
    from qdq_optimizer.calibration import bypass_activation_qdq
    from qdq_optimizer.runtime import run
    from qdq_optimizer.verify import sqnr

    q = quantized("relu", "uint8")
    np.savez(tmp_path / "calib.npz", x=photos("calib", 4))
    half = least_error_factors(q, tmp_path / "calib.npz")
    flags = {name: h for _, name, _, h in convertible_pairs(q)}
    assert half and all(flags[n] and 0.3 <= f <= 1.0 for n, f in half.items())
    assert "conv3_QuantizeLinear" in least_error_factors(q, tmp_path / "calib.npz", False)

    chosen = calibration_judged_factors(q, tmp_path / "calib.npz")
    feeds = {"x": photos("calib", 4)}
    ref = run(bypass_activation_qdq(q), feeds)

    def score(m: onnx.ModelProto) -> float:
        got = run(m, feeds)
        return sqnr(
            np.concatenate([ref[k].ravel() for k in sorted(ref)]),
            np.concatenate([got[k].ravel() for k in sorted(got)]),
        )

    converted = convert(q)
    assert chosen and all(f in (0.9, 0.8) for f in chosen.values())
    assert score(rescale_pairs(converted, chosen)) >= score(converted)  # kept only if better
