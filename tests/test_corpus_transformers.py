"""The transformer corpus (``fixtures/corpus/transformers``, issue 11) and its benchmark's counts.

Every manifest entry's graphs are the ones generated (sha256), valid (ONNX checker, full check)
and load in ONNX Runtime, with held-out inputs keyed by the graph's input names. The held-out
sets are built on demand (``fixtures/corpus/transformer_heldout.py``, the manifest's ``prepare``
hook): reproducible, rebuilt when stale, big enough that every input graph's SQNR rests on at
least 15 samples (Kish), and C2PSA's features come from the backbone its graphs calibrated on.
The counting functions of ``benchmarks/bench_transformers.py`` are checked on a hand-built graph
with one of each form they must tell apart.
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
from qdq_optimizer.testing.held_out import effective_samples, model_sample_noise

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "fixtures" / "corpus" / "transformers" / "manifest.json"
DATA = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
ENTRIES = DATA.get("entries", [])
KEYS = {"name", "producer", "producer_version", "architecture", "quantized", "float", "rules"}
KEYS |= {"inputs", "notes", "sha256"}
HOOK = "fixtures.corpus.transformer_heldout:prepare"
MIN_EFFECTIVE_SAMPLES = 15  # the criterion resolves 0.5 dB only on an SQNR that many samples carry


@pytest.fixture(scope="module")
def held_out():
    """The held-out module, every set built (scikit-image's photographs: the dev extra)."""
    pytest.importorskip("skimage")
    from fixtures.corpus import transformer_heldout

    transformer_heldout.ensure()
    return transformer_heldout


def _bench():
    return load_benchmark("bench_transformers")


def test_manifest_covers_every_architecture_and_producer():
    assert ENTRIES, f"{MANIFEST} is missing or empty (make corpus-transformers)"
    assert {e["architecture"] for e in ENTRIES} == {"vit", "bert", "detr", "c2psa"}
    assert {e["producer"] for e in ENTRIES} == {"pq", "ort", "modelopt", "nncf"}
    assert len({e["name"] for e in ENTRIES}) == len(ENTRIES)
    assert DATA["prepare"] == HOOK
    for e in ENTRIES:
        assert set(e) == KEYS, e["name"]
        assert set(e["sha256"]) == {"quantized", "float"}, e["name"]
        assert e["rules"] == "tensorrt"


def test_committed_binaries_fit_the_size_budget():
    from fixtures.corpus.transformer_heldout import BACKBONE, CACHE

    files = {ROOT / e[k] for e in ENTRIES for k in ("quantized", "float")} | {BACKBONE}
    assert all(f.stat().st_size < 2 * 2**20 for f in files)
    # 20 graphs and 4 float models: 5.3 MB; C2PSA's backbone (1.1 MB) replaced the 0.26 MB of
    # committed held-out sets
    assert sum(f.stat().st_size for f in files) <= 7 * 2**20
    # the held-out sets are built on demand into a git-ignored folder, never committed
    assert all((ROOT / e["inputs"]).parent == CACHE for e in ENTRIES)
    assert "/fixtures/corpus/transformers/.cache/" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_entry_files_are_the_generated_ones_and_valid(entry, held_out):
    for key in ("quantized", "float"):
        data = (ROOT / entry[key]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"][key], f"{key} changed"
    feeds = load_inputs(ROOT / entry["inputs"])
    for key in ("quantized", "float"):
        model = onnx.load(str(ROOT / entry[key]))
        onnx.checker.check_model(model, full_check=True)
        names = {i.name for i in session(model).get_inputs()}
        assert names == set(feeds), f"{key}: inputs {sorted(names)} vs {sorted(feeds)}"
    assert len({len(v) for v in feeds.values()}) == 1


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_held_out_sqnr_rests_on_enough_samples(entry, held_out):
    """The criterion pools the SQNR over the held-out set and fails a 0.5 dB loss; with the 10
    samples the sets had, 1-10 samples carried the input graphs' error (C2PSA: one). Kish's
    effective count of the input graph's per-sample error must reach MIN_EFFECTIVE_SAMPLES."""
    noise = model_sample_noise(ROOT / entry["quantized"], ROOT / entry["float"],
                               ROOT / entry["inputs"])  # fmt: skip
    n_eff = effective_samples(noise)
    assert n_eff >= MIN_EFFECTIVE_SAMPLES, f"{n_eff:.1f} effective samples of {len(noise)}"


@pytest.mark.parametrize("kind", ["photos", "c2psa", "tokens"])
def test_held_out_sets_are_reproducible(kind, held_out):
    """The cached set is exactly what the builder makes now, at the manifest's count."""
    with np.load(held_out.path(kind)) as f:
        cached = {k: f[k] for k in f.files}
    fresh = held_out.BUILDERS[kind](held_out.COUNTS[kind])
    assert cached.keys() == fresh.keys()
    for key in cached:
        assert len(cached[key]) == held_out.COUNTS[kind]
        np.testing.assert_array_equal(cached[key], fresh[key])


def test_a_stale_held_out_set_is_rebuilt_and_a_current_one_kept(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    from fixtures.corpus import transformer_heldout as th

    monkeypatch.setattr(th, "COUNTS", {"photos": 6, "tokens": 7})
    np.savez(th.path("photos", tmp_path), images=np.zeros((3, 3, 64, 64), np.uint8))
    th.ensure(["tokens"], out=tmp_path)
    current = {"input_ids": np.zeros((7, 32), np.int64), "attention_mask": np.zeros((7, 32))}
    np.savez(th.path("tokens", tmp_path), **current)  # right count and key: kept as it is
    th.ensure(["photos", "tokens"], out=tmp_path)
    with np.load(th.path("photos", tmp_path)) as f:
        np.testing.assert_array_equal(f["images"], th.photos_64(6)["images"])
    with np.load(th.path("tokens", tmp_path)) as f:
        assert not f["input_ids"].any()
    th.path("tokens", tmp_path).unlink()  # missing: built
    th.ensure(["tokens"], out=tmp_path)
    with np.load(th.path("tokens", tmp_path)) as f:
        np.testing.assert_array_equal(f["input_ids"], th.tokens(7)["input_ids"])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        th.FILES["photos"],
        th.FILES["tokens"],
    ]
    assert not list(tmp_path.glob(".*tmp"))


def test_held_out_text_is_tokenised_like_the_calibration(held_out):
    """Ids in the encoder's vocabulary, [CLS] first, mask on exactly the tokens, no Zen line (the
    calibration's even lines), and the tokeniser gives the calibration's vocabulary size."""
    vocab = held_out.vocabulary()
    assert len(vocab) + 2 == _embedding_rows(ROOT / "fixtures/corpus/transformers/bert-float.onnx")
    with np.load(held_out.path("tokens")) as f:
        ids, mask = f["input_ids"], f["attention_mask"]
    assert ids.min() >= 0 and ids.max() < len(vocab) + 2
    assert (ids[:, 0] == 1).all() and (mask == (ids > 0)).all()
    zen = held_out.encode(held_out.zen_lines())["input_ids"]
    assert not (ids[:, None, :] == zen[None, :, :]).all(axis=2).any()
    assert len({row.tobytes() for row in ids}) == len(ids)  # distinct lines


def _embedding_rows(path: Path) -> int:
    """Rows of the token embedding: the Gather on ``input_ids``'s table."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    (table,) = [inits[n.input[0]] for n in model.graph.node
                if n.op_type == "Gather" and n.input[1] == "input_ids"]  # fmt: skip
    return table.dims[0]


def test_c2psa_features_come_from_the_backbone_its_graphs_calibrated_on(held_out):
    """pytorch-quantization (max), ONNX Runtime (MinMax, symmetric) and ModelOpt (fp32) set the input
    scale of C2PSA to max |calibration features| / 127: the exported backbone must give those
    features from the calibration photos (the float features only the generator ever held)."""
    import onnxruntime as ort

    digest = hashlib.sha256(held_out.BACKBONE.read_bytes()).hexdigest()
    assert digest == DATA["data"][held_out.BACKBONE.name], (
        "the backbone differs from the manifest's"
    )
    photos = np.load(ROOT / "fixtures/models/photos-calib-160.npz")["images"]
    backbone = ort.InferenceSession(str(held_out.BACKBONE), providers=["CPUExecutionProvider"])
    feats = backbone.run(None, {"images": photos.astype(np.float32) / 255.0})[0]
    assert feats.shape[1:] == (128, 5, 5)
    for producer in ("pq", "ort", "modelopt-fp32"):
        scale = _input_scale(ROOT / f"fixtures/corpus/transformers/c2psa-{producer}.onnx")
        assert np.abs(feats).max() / 127 == pytest.approx(scale, rel=1e-5), producer


def _input_scale(path: Path) -> float:
    """The scale of the QuantizeLinear on the graph input ``features``."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {t.name: t for t in model.graph.initializer}
    values |= {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"}
    (q,) = [n for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] == "features"]  # fmt: skip
    return float(numpy_helper.to_array(values[q.input[1]]))


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
