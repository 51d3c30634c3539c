"""Property tests: Q/DQ graphs generated from YOLO blocks (conv-bn-act, ELAN concat, maxpool
branch, SPP, upsample+concat, residual add, split), quantized naively or by ONNX Runtime. After
``optimize --rules tensorrt`` the model is valid, runs in ONNX Runtime, lints clean, keeps every
quantized conv quantized, and optimizing it again changes nothing. ``make fuzz`` runs more."""

from __future__ import annotations

import os

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.dump import dump_model
from qdq_optimizer.graph import QGraph
from qdq_optimizer.runtime import run
from qdq_optimizer.testing.graphgen import qdq_models
from qdq_optimizer.trt_patterns import is_quantized_weighted

EXAMPLES = int(os.environ.get("QDQOPT_FUZZ_EXAMPLES", "10"))


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
@given(qdq_models())
def test_fuzz_rules_on_generated_graphs(case) -> None:
    form, spec, model = case
    out, rep = optimize(model, "tensorrt")
    assert rep.converged, spec
    onnx.checker.check_model(out, full_check=True)
    y = run(out, seed=1)["outputs"]
    assert np.all(np.isfinite(y))
    assert lint(out, "tensorrt") == [], (form, spec)
    before, after = QGraph.from_model(model), QGraph.from_model(out)
    for n in before.topo_nodes():
        if is_quantized_weighted(before, n):
            assert is_quantized_weighted(after, after.node(n.name)), (form, spec, n.name)
    again, rep2 = optimize(out, "tensorrt")
    assert rep2.total_changes == 0, (form, spec)
    assert dump_model(again) == dump_model(out)


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
@given(qdq_models())
def test_fuzz_calibration_data_changes_only_scales(case) -> None:
    """With calibration samples: valid, lint clean, the data-free placement, no scale smaller
    than the data-free one, and a second calibrated run changes nothing."""
    form, spec, model = case
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    samples = np.random.default_rng(3).random((3, *dims[1:]), dtype=np.float32)
    data = {model.graph.input[0].name: samples}
    plain, _ = optimize(model, "tensorrt")
    out, rep = optimize(model, "tensorrt", calibration_data=data)
    assert rep.converged, spec
    onnx.checker.check_model(out, full_check=True)
    assert lint(out, "tensorrt") == [], (form, spec)

    def placement(m):
        return sorted((n.op_type, n.input[0] if n.input else "") for n in m.graph.node)

    assert placement(out) == placement(plain), (form, spec)
    a, b = QGraph.from_model(plain), QGraph.from_model(out)
    for n in a.topo_nodes():
        if n.op == "DequantizeLinear" and not a.qparams(n).per_axis:
            s_plain = float(a.qparams(n).scale.reshape(-1)[0])
            s_data = float(b.qparams(b.node(n.name)).scale.reshape(-1)[0])
            assert s_data >= s_plain * (1 - 1e-6), (form, spec, n.name)
    again, rep2 = optimize(out, "tensorrt", calibration_data=data)
    assert rep2.total_changes == 0, (form, spec)
    assert dump_model(again) == dump_model(out)
