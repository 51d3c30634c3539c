"""The transformer corpus (``fixtures/corpus/transformers``, issue 11) and its benchmark's counts.

Every manifest entry's files are the ones generated (sha256), valid (ONNX checker, full check)
and load in ONNX Runtime, with held-out inputs keyed by the graph's input names. The counting
functions of ``benchmarks/bench_transformers.py`` are checked on a hand-built graph with one of
each form they must tell apart.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from bench_util import load_benchmark
from qdq_builders import Builder

from qdq_optimizer.runtime import load_inputs, session

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "fixtures" / "corpus" / "transformers" / "manifest.json"
ENTRIES = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else []
KEYS = {"name", "producer", "producer_version", "architecture", "quantized", "float", "rules"}
KEYS |= {"inputs", "notes", "sha256"}


def _bench():
    return load_benchmark("bench_transformers")


def test_manifest_covers_every_architecture_and_producer():
    assert ENTRIES, f"{MANIFEST} is missing or empty (make corpus-transformers)"
    assert {e["architecture"] for e in ENTRIES} == {"vit", "bert", "detr", "c2psa"}
    assert {e["producer"] for e in ENTRIES} == {"pq", "ort", "modelopt", "nncf"}
    assert len({e["name"] for e in ENTRIES}) == len(ENTRIES)
    for e in ENTRIES:
        assert set(e) == KEYS, e["name"]
        assert e["rules"] == "tensorrt"


def test_committed_binaries_fit_the_size_budget():
    files = {ROOT / e[k] for e in ENTRIES for k in ("quantized", "float", "inputs")}
    assert sum(f.stat().st_size for f in files) <= 6 * 2**20


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_entry_files_are_the_generated_ones_and_valid(entry):
    for key in ("quantized", "float", "inputs"):
        data = (ROOT / entry[key]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"][key], f"{key} changed"
    feeds = load_inputs(ROOT / entry["inputs"])
    for key in ("quantized", "float"):
        model = onnx.load(str(ROOT / entry[key]))
        onnx.checker.check_model(model, full_check=True)
        names = {i.name for i in session(model).get_inputs()}
        assert names == set(feeds), f"{key}: inputs {sorted(names)} vs {sorted(feeds)}"
    assert len({len(v) for v in feeds.values()}) == 1 and len(next(iter(feeds.values()))) >= 8


def _counting_graph() -> onnx.ModelProto:
    """One of each: an INT8 GEMM in pytorch-quantization's form (weight behind Transpose), an
    INT8 GEMM with an int8 initializer, a GEMM whose input is float (weight quantized), a float
    GEMM, an INT8 attention matmul (both inputs through DQ, one behind a Transpose), an attention
    matmul with one INT8 input, and an INT8 and a float-input Conv."""
    b = Builder()
    x = b.input("x", [1, 4, 8])
    w = b.rng.standard_normal((8, 8)).astype(np.float32)
    ws = np.full(8, 0.02, np.float32)

    def pq_weight(name):
        wd = b.dq(b.q(b.const(w, "W"), ws, axis=0), ws, axis=0)
        return b.node("Transpose", [wd], name=f"{name}_wT", perm=[1, 0])

    g1 = b.node("MatMul", [b.qdq(x, 0.05), pq_weight("g1")], name="g1")  # INT8
    w8 = b.dq(b.const(np.ones((8, 8), np.int8), "W8"), ws, axis=1)
    g2 = b.node("MatMul", [b.qdq(g1, 0.05), w8], name="g2")  # INT8
    g3 = b.node("MatMul", [g2, pq_weight("g3")], name="g3")  # float input
    g4 = b.node("MatMul", [g3, b.const(w, "Wf")], name="g4")  # float weight
    kt = b.node("Transpose", [b.qdq(g4, 0.05)], name="kT", perm=[0, 2, 1])
    s = b.node("MatMul", [b.qdq(g3, 0.05), kt], name="bmm1")  # INT8: DQ through Transpose
    p = b.node("Softmax", [s], name="softmax", axis=-1)
    o = b.node("MatMul", [p, b.qdq(g2, 0.05)], name="bmm2")  # one INT8 input: float
    img = b.node("Reshape", [o, b.const(np.array([1, 8, 2, 2], np.int64), "shape")], name="r")
    c1 = b.conv(img, 8, 8, k=1, act=None, name="c1")  # INT8
    b.output(b.conv(c1, 8, 8, k=1, act=None, in_scale=None, name="c2"))  # float input
    return b.build()


def test_bench_counts_int8_gemms_bmms_and_convs():
    bench = _bench()
    c = bench.matmul_counts(_counting_graph())
    assert (c.gemm_int8, c.gemm) == (2, 4)
    assert (c.bmm_int8, c.bmm) == (1, 2)
    assert (c.conv_int8, c.conv) == (1, 2)


def test_bench_sqnr_matches_outputs_by_name_or_position():
    bench = _bench()
    ref = {"a": np.ones(4, np.float32), "b": np.full(2, 2.0, np.float32)}
    assert bench.output_sqnr(ref, {"b": ref["b"], "a": ref["a"]}) == float("inf")
    noisy = {"x": ref["a"] + 0.1, "y": ref["b"]}  # renamed outputs: matched by position
    expected = 10 * np.log10((4 * 1 + 2 * 4) / (4 * 0.1**2))
    assert bench.output_sqnr(ref, noisy) == pytest.approx(expected, rel=1e-5)
