"""inspect over every real engine report in ../shared/trt-engines (skipped when absent).

Expected values are re-derived from the raw JSON with TREx's rules (first-input precision after
folding NoOps; Origin/Scale Q/DQ) rather than hard-coded, except the facts TREx's own tests and
the shared README state (layer 0 of the 8.4 MobileNet, 72 layers, the Int8-in/FP16-out conv).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli import main
from qdq_optimizer.engines import attach_profile, check, load_profile, load_report, summarize
from qdq_optimizer.engines.compare import compare
from qdq_optimizer.errors import InputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "trt-engines"
pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/trt-engines is absent"),
]
ALL_JSON = sorted(SHARED.rglob("*.json")) if SHARED.is_dir() else []
GRAPHS = [p for p in ALL_JSON if p.name.endswith(".graph.json") or p.name.startswith("layer")]
RESNET = SHARED / "trt84-resnet18-a100"
VARIANTS = {
    "qat": RESNET / "qat" / "resnet-qat.onnx.engine.graph.json",
    "qat-residual": RESNET / "qat-residual" / "resnet-qat-residual.onnx.engine.graph.json",
    "qat-residual-qgap": RESNET
    / "qat-residual-qgap"
    / "resnet-qat-residual-qgap.onnx.engine.graph.json",
}

# TREx's mapping from the dtype word of a format string (activations.py), written out here.
_TREX_WORDS = {"Int8": "INT8", "FP16": "FP16", "Half": "FP16", "FP32": "FP32", "Float": "FP32"}
_TREX_WORDS.update({"Int32": "INT32", "INT32": "INT32", "INT8": "INT8"})


def _trex_dtype(fmt: str) -> str | None:
    for word in re.findall(r"[A-Za-z0-9]+", fmt.replace(".", "")):
        if word in _TREX_WORDS:
            return _TREX_WORDS[word]
    return None


def _raw_layers(path: Path) -> list[dict]:
    text = path.read_text()
    try:
        return json.loads(text)["Layers"]
    except json.JSONDecodeError:
        body = re.sub(r"^--- Layer \d+ ---$", "", text, flags=re.MULTILINE)
        dec, pos, out = json.JSONDecoder(), 0, []
        while pos < len(body):
            if body[pos].isspace():
                pos += 1
                continue
            doc, pos = dec.raw_decode(body, pos)
            out.append(doc)
        return out


def _trex_expectations(path: Path) -> dict[str, str | None]:
    """name -> TREx precision: first input after NoOp folding (NoOp output aliases its input)."""
    raws = [r for r in _raw_layers(path) if r["LayerType"] not in ("signal", "wait")]
    alias: dict[str, dict] = {}
    out: dict[str, str | None] = {}
    for r in raws:
        ins = [alias.get(t["Name"], t) for t in r["Inputs"]]
        if r.get("ParameterType", r["LayerType"]) == "NoOp":
            if ins and r["Outputs"]:
                alias[r["Outputs"][0]["Name"]] = ins[0]
            continue
        out.setdefault(r["Name"], _trex_dtype(ins[0]["Format/Datatype"]) if ins else None)
    return out


@pytest.mark.parametrize("path", ALL_JSON, ids=lambda p: str(p.relative_to(SHARED)))
def test_every_json_loads_or_fails_cleanly(path: Path) -> None:
    try:
        rep = load_report(path)
    except InputError as exc:
        assert path not in GRAPHS, f"a real layer report was refused: {exc}"
        assert "\n" not in str(exc)
        return
    assert path in GRAPHS
    assert rep.layers


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: str(p.relative_to(SHARED)))
def test_precision_follows_trex_first_input_rule(path: Path) -> None:
    rep = load_report(path)
    expected = _trex_expectations(path)
    assert len(rep.layers) == len(expected)
    compared = 0
    for layer in rep.layers:
        trex = expected[layer.name]
        if trex is not None:
            assert layer.precision == trex, layer.name
            compared += 1
        if layer.inputs:  # we give every layer with inputs a precision, kgen included
            assert layer.precision is not None, layer.name
    assert compared >= len(rep.layers) // 2


def test_trt84_mobilenet_matches_trex_tests() -> None:
    rep = load_report(SHARED / "trt84-mobilenet-qat" / "mobilenet.qat.onnx.engine.graph.json")
    first = rep.layers[0]
    assert first.name == "QuantizeLinear_2" and first.type == "Reformat"
    assert (first.precision, first.output_precision, first.reformat_origin) == (
        "FP32",
        "INT8",
        "QDQ",
    )
    assert len(rep.layers) == 72 and rep.folded_noops == 1
    conv = rep.layer("features.4.conv.2.weight + QuantizeLinear_187 + Conv_191")
    assert (conv.precision, conv.output_precision) == ("INT8", "FP16")
    assert conv.onnx_nodes == ["features.4.conv.2.weight", "QuantizeLinear_187", "Conv_191"]


def test_trt82_scale_layers_count_as_qdq() -> None:
    path = SHARED / "trt82-mobilenet-qat" / "mobilenet.qat.onnx.engine.graph.json"
    raws = _raw_layers(path)
    expected = [
        r["Name"]
        for r in raws
        if r["LayerType"] == "Scale"
        and ("Int8" in r["Inputs"][0]["Format/Datatype"])
        != ("Int8" in r["Outputs"][0]["Format/Datatype"])
    ]
    s = summarize(load_report(path))
    assert s.qdq_reformats == expected and len(expected) > 10
    assert [f.layer for f in s.qdq_reformats_interior] == expected[1:]  # all but the first Q


def test_trt10_fc2_gemm_float_but_simple_test_all_int8() -> None:
    rep = load_report(SHARED / "trt10-gemm-qdq" / "layer_info.json")
    fc2 = rep.layer("/fc2/Gemm_myl0_4")
    assert (fc2.kernel, fc2.precision, fc2.output_precision) == ("gemm", "FP32", "FP32")
    assert "/fc2/DequantizeLinear" in fc2.onnx_nodes
    assert any(v.layer == fc2.name for v in check(rep))
    simple = load_report(SHARED / "trt10-gemm-qdq" / "simple_test" / "layer_info.json")
    gemms = [la for la in simple.layers if la.kernel == "gemm"]
    assert len(gemms) == 3 and all(g.precision == g.output_precision == "INT8" for g in gemms)
    assert check(simple) == []


def test_controlnet_metadata_and_fp16() -> None:
    path = SHARED / "trt86-controlnet-fp16" / "layerinfo.json"
    rep = load_report(path)
    raws = {r["Name"]: r for r in _raw_layers(path)}
    for layer in rep.layers:
        meta = raws[layer.name].get("Metadata", "")
        n_tags = meta.count("[ONNX Layer:")
        if n_tags:
            assert len(layer.onnx_nodes) == n_tags, layer.name
    s = summarize(rep)
    assert s.qdq_reformats == [] and s.by_precision.get("INT8", 0) == 0
    prof = load_profile(SHARED / "trt86-controlnet-fp16" / "profile.json")
    attach_profile(rep, prof)
    assert rep.total_time_ms and rep.total_time_ms > 0


@pytest.mark.parametrize(
    "graph",
    sorted(
        p
        for p in GRAPHS
        if p.name.endswith(".graph.json")
        and (p.parent / p.name.replace(".graph.", ".profile.")).exists()
    ),
    ids=lambda p: p.parent.name,
)
def test_profiles_attach(graph: Path) -> None:
    rep = load_report(graph)
    prof = load_profile(graph.parent / graph.name.replace(".graph.", ".profile."))
    unmatched = attach_profile(rep, prof)
    assert unmatched == []  # only zero-time rows (folded NoOps) may match nothing
    timed = [la for la in rep.layers if la.time_ms is not None]
    assert len(timed) == len(rep.layers)
    assert sum(la.time_share for la in timed) == pytest.approx(1.0)
    if "trt82" in str(graph):
        assert prof.statistic == "averageMs"


def _count_qdq_raw(path: Path) -> int:
    return sum(
        1 for r in _raw_layers(path) if r["LayerType"] == "Reformat" and r.get("Origin") == "QDQ"
    )


def test_resnet18_placements_compared_in_numbers() -> None:
    items = []
    for path in VARIANTS.values():
        rep = load_report(path)
        items.append((rep, summarize(rep)))
    comp = compare(items)
    rows = dict(comp.rows)
    expected = [_count_qdq_raw(p) for p in VARIANTS.values()]
    assert rows["Q/DQ reformats"] == expected
    assert expected[2] < expected[1] < expected[0]
    assert comp.best == "resnet-qat-residual-qgap"
    assert "fewest reformats: 1" in comp.verdict
    # only the qgap placement passes the INT8 gate
    assert [len(check(rep)) == 0 for rep, _ in items] == [False, False, True]


def test_cli_compare_shows_numbers(capsys) -> None:
    args = ["inspect", str(VARIANTS["qat"]), "--compare", str(VARIANTS["qat-residual"])]
    args += ["--compare", str(VARIANTS["qat-residual-qgap"]), "--format", "json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["comparison"]["metrics"]["Q/DQ reformats"] == [10, 3, 1]
    assert data["comparison"]["fewest_reformats"] == "resnet-qat-residual-qgap"


def test_cli_expect_on_real_reports(capsys) -> None:
    assert main(["inspect", str(VARIANTS["qat-residual-qgap"]), "--expect", "int8"]) == 0
    assert main(["inspect", str(VARIANTS["qat"]), "--expect", "int8", "--summary-only"]) == 1
    assert "not INT8 end to end" in capsys.readouterr().err


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: str(p.relative_to(SHARED)))
def test_every_report_renders(path: Path) -> None:
    from qdq_optimizer.engines.render import render_dot, render_json, render_markdown

    rep = load_report(path)
    s = summarize(rep)
    data = json.loads(render_json(rep, s, violations=check(rep)))
    assert len(data["layers"]) == len(rep.layers)
    assert render_markdown(rep, s).count("\n| ") >= len(rep.layers)
    dot = render_dot(rep)
    assert dot.count(" [label=") >= len(rep.layers)
