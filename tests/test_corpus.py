"""The corpus criterion on every graph of every ``fixtures/corpus/*/manifest.json``.

One test per graph from another producer (pytorch-quantization, ONNX Runtime, ModelOpt, NNCF, ...):
``optimize`` succeeds, its output is valid and lint-clean, loses no quantized conv/GEMM, keeps
SQNR (and the task metric) within tolerance of the input's, is idempotent and fast
(``qdq_optimizer.testing.corpus.evaluate``). Graphs that fail today for a known rule bug are
strict xfails with the measured reason (``fixtures/corpus/known_failures.json``): fixing the rule
turns them into XPASS failures, and the entry is then deleted from that file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qdq_optimizer.testing import corpus

ENTRIES = corpus.load_manifests()
KNOWN = corpus.load_known_failures()


def _param(entry: corpus.CorpusEntry):
    marks = []
    if entry.name in KNOWN:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[entry.name]))
    return pytest.param(entry, id=entry.name, marks=marks)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.parametrize("entry", [_param(e) for e in ENTRIES])
def test_corpus_graph(entry: corpus.CorpusEntry) -> None:
    assert not corpus.changed_files(entry), "corpus file differs from manifest.json's sha256"
    result = corpus.evaluate(entry, input_lint=False)
    assert result.passed, "; ".join(result.reasons)


def test_known_failures_name_corpus_graphs() -> None:
    """A stale name in known_failures.json would silently stop guarding anything."""
    names = {e.name for e in ENTRIES}
    assert not set(KNOWN) - names if ENTRIES else True


def test_corpus_files_present() -> None:
    """Every manifest path exists (a missing file must fail loudly, not be skipped)."""
    for e in ENTRIES:
        corpus.prepare(e)
        for path in (e.model, e.reference, e.inputs, e.calibration):
            assert path is None or path.is_file(), f"{e.name}: {path} missing"


# ----------------------------------------------------------------------------- the harness itself
def _conv_model(quantize_weight: bool) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(w) -> y, the weight behind its own DQ or a plain float initializer."""
    f32 = TensorProto.FLOAT
    inits = [
        helper.make_tensor("s", f32, [], [0.1]),
        helper.make_tensor("z", TensorProto.INT8, [], [0]),
        helper.make_tensor("w8", TensorProto.INT8, [2, 1, 1, 1], [1, -1]),
        helper.make_tensor("wf", f32, [2, 1, 1, 1], [0.1, -0.1]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
    ]
    if quantize_weight:
        nodes.append(helper.make_node("DequantizeLinear", ["w8", "s", "z"], ["wd"], name="wdq"))
        nodes.append(helper.make_node("Identity", ["wd"], ["wi"], name="id"))
    nodes.append(
        helper.make_node("Conv", ["xd", "wi" if quantize_weight else "wf"], ["y"], name="c")
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", f32, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", f32, [1, 2, 2, 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_quantized_weighted_ops_needs_both_inputs_quantized() -> None:
    assert corpus.quantized_weighted_ops(_conv_model(True)) == ["c"]
    assert corpus.quantized_weighted_ops(_conv_model(False)) == []


def test_manifests_merge_and_reject_duplicate_names(tmp_path) -> None:
    for folder, name in (("a", "g1"), ("b", "g2")):
        (tmp_path / folder).mkdir()
        entry = {"name": name, "producer": "p", "model": "m.onnx", "reference": "f.onnx"}
        (tmp_path / folder / "manifest.json").write_text(json.dumps({"entries": [entry]}))
    entries = corpus.load_manifests(tmp_path)
    assert [e.name for e in entries] == ["g1", "g2"]
    assert entries[1].model == (tmp_path / "b" / "m.onnx").resolve()
    (tmp_path / "b" / "manifest.json").write_text(
        json.dumps([{"name": "g1", "producer": "p", "model": "m.onnx", "reference": "f.onnx"}])
    )
    with pytest.raises(ValueError, match="g1"):
        corpus.load_manifests(tmp_path)


def test_task_hook_is_loaded_from_the_manifest_folder(tmp_path) -> None:
    (tmp_path / "tasks.py").write_text("def score(model, inputs):\n    return len(model) / 1000\n")
    entry = corpus.CorpusEntry.from_dict(
        {
            "name": "t",
            "producer": "p",
            "model": "m.onnx",
            "reference": "f.onnx",
            "task": "tasks:score",
        },
        tmp_path,
        tmp_path / "manifest.json",
    )
    assert corpus.task_function(entry)("abcd", "x") == pytest.approx(0.004)


def _held_out_entry(tmp_path, samples: np.ndarray) -> corpus.CorpusEntry:
    """A quantized two-conv graph and its float twin, judged on ``samples``."""
    from tests.qdq_builders import Builder

    for name, quantized in (("m", True), ("f", False)):
        b = Builder(seed=3)
        x = b.input("x", ["N", 3, 8, 8])
        y = b.conv(x, 3, 8, in_scale=0.02 if quantized else None, name="c1")
        b.output(b.conv(y, 8, 4, act=None, in_scale=0.05 if quantized else None, name="c2"))
        onnx.save(b.build(), tmp_path / f"{name}.onnx")
    np.savez(tmp_path / "val.npz", x=samples.astype(np.float32))
    entry = {"name": "g", "producer": "p", "model": "m.onnx", "reference": "f.onnx"}
    return corpus.CorpusEntry.from_dict({**entry, "inputs": "val.npz"}, tmp_path)


def test_criterion_fails_a_held_out_set_too_small_to_resolve_the_tolerance(tmp_path) -> None:
    """A pooled SQNR that a few samples decide says nothing at 0.5 dB: the criterion must say
    the set is too small rather than pass or fail the rewrite on it."""
    rng = np.random.default_rng(0)
    few = rng.standard_normal((4, 3, 8, 8))
    few[0] *= 30  # one loud sample holds nearly all the error
    small = corpus.evaluate(_held_out_entry(tmp_path, few), input_lint=False)
    assert small.held_out == 4 and small.effective_samples < 2
    assert any(r.startswith("held-out set too small") for r in small.reasons)

    many = rng.standard_normal((64, 3, 8, 8))
    big = corpus.evaluate(_held_out_entry(tmp_path, many), input_lint=False)
    assert big.held_out == 64 and big.effective_samples >= corpus.MIN_EFFECTIVE_SAMPLES
    assert not any(r.startswith("held-out set too small") for r in big.reasons)


def test_an_input_onnx_runtime_cannot_run_is_not_judged_but_still_checked(tmp_path) -> None:
    """A bf16 graph (no CPU kernel) or an int8 graph input the photos cannot feed: the criterion
    says "not judged" instead of crashing the table, and still optimizes (without samples) and
    checks the result's validity, lint and INT8 ops."""
    bad = np.zeros((4, 3, 9, 9))  # not the model's 8x8: every run of it fails the same way
    res = corpus.evaluate(_held_out_entry(tmp_path, bad), input_lint=False)
    assert res.reasons[0].startswith("not judged: ONNX Runtime cannot run the input")
    assert res.exit_code == 0 and res.valid and res.problems_after == 0
    assert res.int8_ops_after == res.int8_ops_before == 2 and math.isnan(res.sqnr_after)
    assert not res.passed


def test_a_cached_set_is_kept_only_while_its_generator_is_unchanged(tmp_path) -> None:
    """``common.ensure_set``: built when missing; kept while count and key match; rebuilt when
    what made it changed (a generator file, a package version) or its key is lost, so an older
    checkout's set is never silently scored against."""
    from fixtures.corpus import common

    calls = []

    def build():
        calls.append(1)
        return {"x": np.full((4, 2), len(calls), np.int32)}

    path, dep = tmp_path / "set.npz", tmp_path / "generator.py"
    dep.write_text("version 1")
    common.ensure_set(path, 4, build, depends=(dep, "pkg==1"))
    common.ensure_set(path, 4, build, depends=(dep, "pkg==1"))
    assert len(calls) == 1
    common.ensure_set(path, 4, build, depends=(dep, "pkg==2"))
    assert len(calls) == 2
    dep.write_text("version 2")
    common.ensure_set(path, 4, build, depends=(dep, "pkg==2"))
    assert len(calls) == 3
    common.key_path(path).unlink()
    common.ensure_set(path, 4, build, depends=(dep, "pkg==2"))
    assert len(calls) == 4
    with np.load(path) as f:
        assert (f["x"] == 4).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".set.npz.key", "generator.py", "set.npz"]


def test_a_prepare_hook_builds_beside_each_copy_of_a_manifest(tmp_path, monkeypatch) -> None:
    """The hook gets the manifest's folder, once per process and folder: the held-out graphs
    that ``make corpus-heldout`` writes outside the repository get their photo sets beside
    them, not in the committed corpus's folder (which it used to write, whatever the manifest)."""
    import json
    import sys
    import types

    calls: list[Path] = []
    probe = types.ModuleType("qdqopt_probe_hook")
    probe.build = calls.append
    monkeypatch.setitem(sys.modules, "qdqopt_probe_hook", probe)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        entry = {"name": f"g-{sub}", "producer": "p", "model": "m.onnx", "reference": "f.onnx"}
        doc = {"prepare": "qdqopt_probe_hook:build", "entries": [{**entry, "inputs": "v.npz"}]}
        (tmp_path / sub / "manifest.json").write_text(json.dumps(doc))
    entries = corpus.load_manifests(tmp_path)
    for e in entries * 2:
        corpus.prepare(e)
    corpus.manifest_items(tmp_path / "a" / "manifest.json")
    assert calls == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]


def test_cnn_held_out_sets_are_rebuilt_and_reproducible(tmp_path) -> None:
    """The CNN manifest's prepare hook: a set cached for another count is rebuilt, and what it
    writes is exactly what the generator makes (the same crops on every machine)."""
    pytest.importorskip("skimage")
    from fixtures.corpus import photos

    stale = tmp_path / "photos-val-64.npz"
    np.savez(stale, images=np.zeros((3, 3, 64, 64), np.uint8))
    photos.ensure_val(tmp_path)
    for size in photos.SETS:
        with np.load(tmp_path / f"photos-val-{size}.npz") as f:
            images = f["images"]
        assert images.shape == (photos.VAL_COUNT, 3, size, size) and images.dtype == np.uint8
        np.testing.assert_array_equal(
            images[:8], photos.random_views(photos.VAL, size, 8, photos.VAL_SEED)
        )
    assert not list(tmp_path.glob(".*tmp"))
