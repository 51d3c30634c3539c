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
from qdq_optimizer.testing.graphgen import qdq_models
from qdq_optimizer.trt_patterns import is_quantized_weighted
from qdq_optimizer.verify import run

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
