"""The inspect reader on the project's own engine-report fixtures: every format, every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdq_optimizer.engines import (
    attach_profile,
    check,
    enforce,
    load_profile,
    load_report,
    summarize,
)
from qdq_optimizer.engines.classify import metadata_nodes, name_nodes
from qdq_optimizer.errors import CheckFailed, InputError, UsageError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "engines"


def test_trt82_scale_layers_with_int8_on_one_side_are_qdq_reformats() -> None:
    rep = load_report(FIX / "trt82-scale-qdq.graph.json")
    assert rep.trt_version_guess == "8.2"
    assert rep.folded_noops == 1 and len(rep.layers) == 6
    q = rep.layer("QuantizeLinear_2")
    assert (q.is_reformat, q.reformat_origin, q.precision, q.output_precision) == (
        True,
        "QDQ",
        "FP32",
        "INT8",
    )
    bn = rep.layer("BatchNormalization_31")  # a real Scale layer: FP32 on both sides
    assert not bn.is_reformat and bn.precision == "FP32"
    conv = rep.layer("features.0.weight + QuantizeLinear_8 + Conv_12 + PWN(Clip_16)")
    assert conv.onnx_nodes == ["features.0.weight", "QuantizeLinear_8", "Conv_12", "Clip_16"]
    assert conv.weights_dtype == "INT8" and conv.tactic.startswith("volta_int8")
    # the NoOp leaf handed the network output to the classifier conv
    assert rep.network_outputs == ["output"]
    assert rep.layers[-1].outputs[0].name == "output"
    s = summarize(rep)
    assert s.qdq_reformats == ["QuantizeLinear_2", "QuantizeLinear_33"]
    assert [f.layer for f in s.qdq_reformats_interior] == ["QuantizeLinear_33"]
    assert {f.layer for f in s.non_int8_compute} == {
        "features.1.weight + QuantizeLinear_25 + Conv_29",
        "BatchNormalization_31",
    }


def test_trt82_profile_without_median_uses_average() -> None:
    rep = load_report(FIX / "trt82-scale-qdq.graph.json")
    prof = load_profile(FIX / "trt82-scale-qdq.profile.json")
    assert prof.statistic == "averageMs"
    attach_profile(rep, prof)
    assert rep.total_time_ms == pytest.approx(0.100)
    assert rep.layer("QuantizeLinear_33").time_ms == pytest.approx(0.010)
    assert sum(la.time_share for la in rep.layers) == pytest.approx(1.0)
    s = summarize(rep)
    assert s.time_ms["qdq_reformats"] == pytest.approx(0.022)


def test_trt86_metadata_reformat_origin_and_hidden_fp16_output() -> None:
    rep = load_report(FIX / "trt86-reformat-metadata.graph.json")
    assert rep.trt_version_guess == "8.6"
    conv2 = rep.layer("conv2.weight + DequantizeLinear_9 + Conv_10")
    # TREx's first-input rule says INT8; output_precision shows the FP16 it hides
    assert (conv2.precision, conv2.output_precision) == ("INT8", "FP16")
    assert conv2.onnx_nodes == ["DequantizeLinear_7", "DequantizeLinear_9", "Conv_10"]
    layout = rep.layer("Reformatting CopyNode for Input Tensor 0 to MaxPool_11")
    assert (layout.is_reformat, layout.reformat_origin, layout.onnx_nodes) == (True, "LAYOUT", [])
    s = summarize(rep)
    assert s.layout_reformats == [layout.name]
    assert s.precision_conversions == {
        "FP32->INT8": 1,
        "INT8->FP16": 1,
        "FP16->INT8": 1,
        "INT8->FP32": 1,
    }
    prof = load_profile(FIX / "trt86-reformat-metadata.profile.json")
    assert prof.statistic == "medianMs"
    attach_profile(rep, prof)
    assert rep.layer("MaxPool_11").time_ms == pytest.approx(0.0020)


def test_trt10_per_layer_dumps_kgen_gemm_bare_types() -> None:
    rep = load_report(FIX / "trt10-kgen-int8.layers.json")
    assert rep.trt_version_guess == "10"
    assert [la.kernel for la in rep.layers] == ["shape_call", "kgen", "gemm", "gemm", "kgen"]
    q = rep.layers[1]
    assert (q.precision, q.output_precision, q.reformat_origin) == ("FP32", "INT8", "QDQ")
    gemm = rep.layer("/fc1/MatMul_myl0_2")
    assert gemm.precision == "INT8" and gemm.onnx_nodes[0] == "/fc1/MatMul"
    assert "/act/Relu" in gemm.onnx_nodes and not gemm.is_reformat
    assert rep.network_inputs == ["x"] and rep.network_outputs == ["logits"]
    assert check(rep) == []


def test_trt10_half_gemm_fails_the_gate() -> None:
    rep = load_report(FIX / "trt10-kgen-half.layers.json")
    kinds = {(v.layer, v.kind) for v in check(rep)}
    assert kinds == {
        ("__myl_Sigm_myl0_4", "compute"),
        ("/fc2/MatMul_myl0_5", "compute"),
        ("__myl_CastMul_myl0_3", "qdq_reformat"),
    }
    sigm = rep.layer("__myl_Sigm_myl0_4")
    assert sigm.precision == "FP16"  # kgen layers get a precision too


def test_trt11_io_tensors_split_format_and_datatype() -> None:
    rep = load_report(FIX / "trt11-io-tensors.graph.json")
    assert rep.trt_version_guess == "11"
    assert rep.network_inputs == ["images"] and rep.network_outputs == ["logits"]
    conv = rep.layer("/conv1/Conv + PWN(/act1/Relu)")
    assert (conv.precision, conv.output_precision) == ("INT8", "INT8")
    assert conv.inputs[0].format == "Four wide channel vectorized row major"
    head = rep.layer("/head/Conv")
    assert (head.precision, head.output_precision) == ("INT8", "FP32")
    assert check(rep) == []  # the head's FP32 output is the network output


def test_names_only_report_names_the_flag() -> None:
    with pytest.raises(InputError, match="--profilingVerbosity=detailed"):
        load_report(FIX / "names-only.graph.json")


def test_dynamic_shapes_warn_and_never_guess() -> None:
    rep = load_report(FIX / "dynamic-na.graph.json")
    assert all(la.precision is None for la in rep.layers)
    assert any("--shapes" in w for w in rep.warnings)
    violations = check(rep)
    assert [v.reason for v in violations] == ["dtype unknown"]


def test_gate_allow_list_and_enforce() -> None:
    rep = load_report(FIX / "trt86-reformat-metadata.graph.json")
    assert len(check(rep)) == 3
    with pytest.raises(CheckFailed, match="not INT8 end to end"):
        enforce(rep)
    # allowing the FP16 part also excuses the Q/DQ reformat that drains it
    assert check(rep, allow=[r"Conv_10", r"MaxPool_11"]) == []
    # a float MaxPool excuses the conv feeding it float and the Q after it ...
    assert check(rep, allow=[r"MaxPool_11"]) == []
    # ... but excusing the conv alone leaves the FP16 MaxPool and its Q
    assert {v.layer for v in check(rep, allow=[r"Conv_10"])} == {"MaxPool_11", "QuantizeLinear_12"}
    with pytest.raises(UsageError, match="regular expression"):
        check(rep, allow=["("])
    with pytest.raises(UsageError):
        check(rep, expect="fp4")


def test_keep_noops_and_duplicate_names() -> None:
    raw = json.loads((FIX / "trt82-scale-qdq.graph.json").read_text())
    raw["Layers"][3]["Name"] = raw["Layers"][2]["Name"]
    rep = load_report(raw, fold_noops=False)
    assert len(rep.layers) == 7 and rep.folded_noops == 0
    assert rep.layers[3].name == rep.layers[2].name + "_2"


def test_metadata_and_name_parsing() -> None:
    assert metadata_nodes("[ONNX Layer: a]\u001e[ONNX Layer: b/c]\u001f[ONNX Layer: d]") == [
        "a",
        "b/c",
        "d",
    ]
    assert metadata_nodes(["device", "props"]) == []
    assert name_nodes("x.weight + QuantizeLinear_8 + Conv_12 + PWN(PWN(Sigmoid_3), Mul_4)") == [
        "x.weight",
        "QuantizeLinear_8",
        "Conv_12",
        "Sigmoid_3",
        "Mul_4",
    ]
    assert name_nodes("fc.bias + (Unnamed Layer* 306) [Shuffle] + Gemm_5") == ["fc.bias", "Gemm_5"]
    assert name_nodes("Reformatting CopyNode for Input Tensor 0 to Conv_3") == []
    assert name_nodes("{ForeignNode[a.weight...b/Reshape]}") == ["a.weight", "b/Reshape"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty file"),
        ('{"Layers": [{"Name": "a", "LayerType"', "malformed JSON at line 1.*truncated"),
        ("[1, 2]", "top level is a list"),
        ('"just a string"', "top level is a string"),
        ('{"Layers": {"a": 1}}', "'Layers' must be a list"),
        ('{"Layers": []}', "no layers"),
        ('{"Layers": [3]}', "layer 0 is a number"),
        (
            '{"Layers": [{"Name": "a", "Inputs": [{"Name": "x", "Dimensions": ["1", 3], '
            '"Format/Datatype": "Float"}]}]}',
            "Dimensions must be a list of integers",
        ),
        (
            '{"Layers": [{"Name": "a", "Inputs": [{"Name": "x", "Format/Datatype": 7}]}]}',
            "format must be a string",
        ),
        ('{"Layers": [{"Name": "a", "Weights": {"Type": "Int8", "Count": "10"}}]}', "Count"),
        ('{"Layers": [{"Name": 5}]}', "no string 'Name'"),
        ('{"Layers": [{"Name": "a", "Inputs": 5}]}', "'Inputs' must be a list"),
        ('{"Layers": [{"Name": "a"}], "Bindings": [5]}', "Bindings"),
    ],
)
def test_bad_reports_are_one_line_input_errors(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(InputError, match=match) as info:
        load_report(p)
    assert "\n" not in str(info.value)


def test_size_cap_refuses_before_reading(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "big.json"
    p.write_bytes(b" " * 4096)
    with pytest.raises(InputError, match="over the 0 MiB limit"):
        load_report(p, max_bytes=1024)
    monkeypatch.setenv("QDQOPT_INSPECT_MAX_MB", "0.001")
    with pytest.raises(InputError, match="limit"):
        load_report(p)
    monkeypatch.setenv("QDQOPT_INSPECT_MAX_MB", "lots")
    with pytest.raises(InputError, match="QDQOPT_INSPECT_MAX_MB"):
        load_report(p)


def test_missing_binary_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_report(tmp_path / "nope.json")
    with pytest.raises(InputError, match="folder"):
        load_report(tmp_path)
    p = tmp_path / "engine.bin"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(InputError, match="UTF-8"):
        load_report(p)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"Layers": []}', "JSON list"),
        ('[{"name": "a", "averageMs": "fast"}]', "must be a number"),
        ('[{"name": "a"}]', "without 'medianMs' or 'averageMs'"),
        ('[{"count": 3}]', "no layer rows"),
        ('[{"name": 3, "averageMs": 1}]', "'name' must be a string"),
        ("[", "malformed JSON"),
    ],
)
def test_bad_profiles(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "p.json"
    p.write_text(content)
    with pytest.raises(InputError, match=match):
        load_profile(p)


def test_profile_given_as_report_is_explained() -> None:
    with pytest.raises(InputError, match="--profile"):
        load_report(FIX / "trt86-reformat-metadata.profile.json")


def test_wrong_profile_warns(tmp_path: Path) -> None:
    rep = load_report(FIX / "trt86-reformat-metadata.graph.json")
    attach_profile(rep, load_profile(FIX / "trt82-scale-qdq.profile.json"))
    assert any("wrong profile" in w for w in rep.warnings)


def _tensor(name: str, fmt: str) -> dict:
    return {"Name": name, "Dimensions": [1, 8], "Format/Datatype": fmt}


def test_long_reformat_chain_needs_no_recursion() -> None:
    int8, fp16 = "Row major Int8 format", "Row major linear FP16 format"
    layers = [
        {
            "Name": "QuantizeLinear_0",
            "LayerType": "Reformat",
            "Origin": "QDQ",
            "Inputs": [_tensor("in", "Row major linear FP32")],
            "Outputs": [_tensor("t0", int8)],
        }
    ]
    for i in range(1, 5000):  # deeper than Python's recursion limit
        fmt = int8 if i % 2 else "Channel major Int8 format"
        layers.append(
            {
                "Name": f"copy_{i}",
                "LayerType": "Reformat",
                "Origin": "REFORMAT",
                "Inputs": [_tensor(f"t{i - 1}", int8)],
                "Outputs": [_tensor(f"t{i}", fmt)],
            }
        )
    layers.append(
        {
            "Name": "Conv_1",
            "LayerType": "CaskConvolution",
            "ParameterType": "Convolution",
            "Inputs": [_tensor("t4999", int8)],
            "Outputs": [_tensor("out", fp16)],
        }
    )
    rep = load_report({"Layers": layers, "Bindings": ["in", "out"]})
    s = summarize(rep)
    assert s.qdq_reformats_interior == [] and len(s.layout_reformats) == 4999
    assert check(rep) == []  # the conv's FP16 output is the network output


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["Int8", "Half", "N/A", ""]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "Name",
                    "LayerType",
                    "ParameterType",
                    "Inputs",
                    "Outputs",
                    "Format/Datatype",
                    "Dimensions",
                    "Origin",
                    "Metadata",
                    "Weights",
                    "Count",
                    "Type",
                    "DataType",
                    "Format",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, database=None)
@given(layers=st.lists(_json, min_size=1, max_size=4), bindings=_json)
def test_fuzz_any_json_is_a_report_or_an_input_error(layers, bindings) -> None:
    try:
        rep = load_report({"Layers": layers, "Bindings": bindings})
    except InputError:
        return
    summarize(rep)
    check(rep)


@pytest.mark.parametrize(
    "name",
    ["trt82-scale-qdq.graph.json", "trt10-kgen-int8.layers.json", "trt11-io-tensors.graph.json"],
)
def test_truncated_files_never_crash(tmp_path: Path, name: str) -> None:
    text = (FIX / name).read_text()
    p = tmp_path / name
    for cut in range(7, len(text), max(1, len(text) // 37)):
        p.write_text(text[:cut])
        try:
            rep = load_report(p)  # a cut between per-layer dumps is still a valid report
        except InputError as exc:
            assert "\n" not in str(exc)
        else:
            summarize(rep)


def test_several_optimization_profiles_keep_profile_0() -> None:
    raw = json.loads((FIX / "trt86-reformat-metadata.graph.json").read_text())
    extra = json.loads(json.dumps(raw["Layers"]))
    for layer in extra:
        layer["Name"] += " [profile 1]"
        for t in layer["Inputs"] + layer["Outputs"]:
            t["Name"] += " [profile 1]"
    raw["Layers"] += extra
    raw["Bindings"] += ["input [profile 1]", "output [profile 1]"]
    rep = load_report(raw)
    assert len(rep.layers) == 7 and rep.network_inputs == ["input"]
    assert any("optimization profiles" in w for w in rep.warnings)


def test_reformat_without_origin() -> None:
    def reformat(name: str) -> dict:
        return {
            "Name": name,
            "LayerType": "Reformat",
            "Inputs": [_tensor("a", "Row major linear FP32")],
            "Outputs": [_tensor("b", "Row major Int8 format")],
        }

    rep = load_report({"Layers": [reformat("QuantizeLinear_7")]})
    assert rep.layers[0].reformat_origin == "QDQ"
    rep = load_report({"Layers": [reformat("Reformatting CopyNode for Input Tensor 0 to Conv_3")]})
    assert rep.layers[0].reformat_origin == "LAYOUT"


def test_single_per_layer_dump_and_error_position(tmp_path: Path) -> None:
    text = (FIX / "trt10-kgen-int8.layers.json").read_text()
    p = tmp_path / "one.json"
    p.write_text(text[: text.index("--- Layer 2 ---")])
    assert len(load_report(p).layers) == 2
    p.write_text(text.replace('"LayerType": "gemm"', '"LayerType": gemm', 1))
    with pytest.raises(InputError, match=r"line 3\d column"):
        load_report(p)
