"""`qdqopt inspect` and `qdqopt build` through the CLI: formats, exit codes, files, fake builder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from cli import main
from qdq_optimizer.engines import build as engine_build
from qdq_optimizer.engines.build import build_engine, default_report_path
from qdq_optimizer.engines.tensorrt_api import BuildResult, TensorRTBuilder
from qdq_optimizer.errors import InputError, MissingDependencyError, UsageError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "engines"
R86 = str(FIX / "trt86-reformat-metadata.graph.json")
P86 = str(FIX / "trt86-reformat-metadata.profile.json")
R10 = str(FIX / "trt10-kgen-int8.layers.json")


def test_table_default(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["inspect", R86, "--profile", P86]) == 0
    out = capsys.readouterr().out
    assert "conv2.weight + DequantizeLinear_9 + Conv_10" in out
    assert "INT8->FP16" in out and "qdq" in out and "layout" in out
    assert "0.0041 (10.3%)" in out and "Q/DQ reformats" in out


def test_json_schema(capsys) -> None:
    assert main(["inspect", R86, "--profile", P86, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"source", "trt_version_guess", "layers", "summary"} <= set(data)
    layer_keys = {"name", "type", "kernel", "precision", "output_precision", "is_reformat"}
    layer_keys |= {"reformat_origin", "onnx_nodes", "inputs", "outputs", "weights_dtype"}
    layer_keys |= {"tactic", "time_ms"}
    assert all(set(la) == layer_keys for la in data["layers"])
    assert set(data["layers"][0]["inputs"][0]) == {"name", "dtype", "format", "shape"}
    summary_keys = {"layers", "by_precision", "by_type", "non_int8_compute", "qdq_reformats"}
    assert summary_keys | {"layout_reformats"} <= set(data["summary"])
    assert data["summary"]["qdq_reformats"] == ["QuantizeLinear_0", "QuantizeLinear_12"]
    assert data["layers"][2]["output_precision"] == "FP16"
    assert sum(la["time_ms"] for la in data["layers"]) == pytest.approx(0.0398)


def test_expect_exit_codes(capsys) -> None:
    assert main(["inspect", R10, "--expect", "int8"]) == 0
    assert "passed" in capsys.readouterr().out
    assert main(["inspect", R86, "--expect", "int8", "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["expect"]["passed"] is False
    assert "QuantizeLinear_12" in captured.err
    assert main(["inspect", R86, "--expect", "int8", "--allow", "MaxPool_11"]) == 0
    capsys.readouterr()
    assert main(["inspect", R86, "--allow", "x"]) == 2  # --allow without --expect
    assert main(["inspect", R86, "--expect", "int8", "--allow", "(("]) == 2


def test_markdown_and_onnx_mapping(capsys) -> None:
    args = ["inspect", R86, "--onnx", str(FIX / "tiny-qdq.onnx"), "--format", "markdown"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| layout reformats | 1 |" in out
    assert "`Conv_10` (Conv)" in out and "output FP16" in out
    assert "`QuantizeLinear_12` -> `QuantizeLinear_12` FP16->INT8 (interior)" in out
    assert "after MaxPool_11 (MaxPool), before Conv_16 (Conv)" in out


def test_onnx_mapping_json(capsys) -> None:
    args = ["inspect", R86, "--onnx", str(FIX / "tiny-qdq.onnx"), "--format", "json"]
    assert main(args) == 0
    m = json.loads(capsys.readouterr().out)["onnx"]
    assert m["quantized_weighted_nodes"] == 3
    assert [e["node"] for e in m["quantized_not_int8"]] == ["Conv_10"]
    assert [(e["node"], e["interior"]) for e in m["standalone_qdq"]] == [
        ("QuantizeLinear_0", False),
        ("QuantizeLinear_12", True),
    ]


def test_bad_onnx(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xff")
    assert main(["inspect", R86, "--onnx", str(bad)]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_dot_and_output_file(tmp_path: Path) -> None:
    out = tmp_path / "g.dot"
    assert main(["inspect", R86, "--format", "dot", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("digraph engine {")
    assert text.count("->") >= 7 and "octagon" in text and "dashed" in text
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
def test_svg(tmp_path: Path) -> None:
    out = tmp_path / "g.svg"
    assert main(["inspect", R86, "--format", "svg", "-o", str(out)]) == 0
    assert "<svg" in out.read_text()


def test_svg_without_dot(monkeypatch, capsys) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert main(["inspect", R86, "--format", "svg"]) == 2
    assert "graphviz" in capsys.readouterr().err.lower()


def test_output_must_differ_from_input(capsys) -> None:
    assert main(["inspect", R86, "-o", R86]) == 2
    assert "differ" in capsys.readouterr().err


def test_compare_markdown_and_bad_format(capsys) -> None:
    args = ["inspect", R86, "--compare", R10, "--format", "markdown"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| Q/DQ reformats | 2 | 2 |" in out
    assert "| layout reformats | 1 | 0 |" in out
    assert "trt10-kgen-int8 leaves the fewest reformats: 2" in out
    assert main(["inspect", R86, "--compare", R10, "--format", "dot"]) == 2


def test_plan_without_tensorrt(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where installed
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00ptrt")
    assert main(["inspect", str(plan)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    stem = tmp_path / "model"
    assert f"trtexec --onnx={stem}.onnx --int8" in err  # the plan's own name, not a stock one
    assert f"--profilingVerbosity=detailed --exportLayerInfo={stem}.graph.json" in err
    assert "TensorRT 11 has no --int8 flag" in err


def test_build_hint_names_the_users_model(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx_in = tmp_path / "my-detector.onnx"
    onnx_in.write_bytes((FIX / "tiny-qdq.onnx").read_bytes())
    assert main(["build", str(onnx_in), "--engine", str(tmp_path / "e.plan")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("qdqopt: error:") and err.count("qdqopt: error:") == 1
    # the user's model in, and the files where build would have written them
    assert f"trtexec --onnx={onnx_in} --saveEngine={tmp_path / 'e.plan'} " in err
    assert f"--exportLayerInfo={tmp_path / 'e.graph.json'}" in err
    assert f"--exportProfile={tmp_path / 'e.profile.json'}" in err
    assert "model.onnx" not in err
    assert not (tmp_path / "e.plan").exists()


class FakeBuilder:
    """Stands in for TensorRT: returns a canned engine and one of our fixture reports."""

    def __init__(self, report: str) -> None:
        self.report = report
        self.calls: list[tuple[Path, bool]] = []

    def build(self, onnx_path: Path, *, fp16: bool) -> BuildResult:
        self.calls.append((onnx_path, fp16))
        return BuildResult(engine=b"PLAN", layer_info=self.report)


def test_build_writes_engine_and_report(tmp_path: Path) -> None:
    fake = FakeBuilder(Path(R86).read_text())
    out = build_engine(FIX / "tiny-qdq.onnx", tmp_path / "m.plan", fp16=True, builder=fake)
    assert fake.calls == [(FIX / "tiny-qdq.onnx", True)]
    assert out.report_path == tmp_path / "m.graph.json" == default_report_path(tmp_path / "m.plan")
    assert (tmp_path / "m.plan").read_bytes() == b"PLAN"
    assert out.layers == 7
    assert main(["inspect", str(out.report_path), "--expect", "int8", "--allow", "MaxPool"]) == 0


def test_build_refuses_names_only_and_writes_nothing(tmp_path: Path) -> None:
    fake = FakeBuilder((FIX / "names-only.graph.json").read_text())
    with pytest.raises(InputError, match="profilingVerbosity"):
        build_engine(FIX / "tiny-qdq.onnx", tmp_path / "m.plan", builder=fake)
    assert list(tmp_path.iterdir()) == []


def test_build_usage_errors(tmp_path: Path) -> None:
    fake = FakeBuilder(Path(R86).read_text())
    with pytest.raises(InputError, match="not found"):
        build_engine(tmp_path / "none.onnx", tmp_path / "m.plan", builder=fake)
    with pytest.raises(UsageError):
        build_engine(FIX / "tiny-qdq.onnx", tmp_path / "no" / "m.plan", builder=fake)
    with pytest.raises(UsageError, match="differ"):
        build_engine(
            FIX / "tiny-qdq.onnx",
            tmp_path / "m.plan",
            report_path=tmp_path / "m.plan",
            builder=fake,
        )
    assert fake.calls == []


def test_build_cli_with_fake_and_without_tensorrt(tmp_path: Path, monkeypatch, capsys) -> None:
    fake = FakeBuilder(Path(R10).read_text())
    monkeypatch.setattr(engine_build, "default_builder", fake)
    plan = tmp_path / "e.plan"
    report = tmp_path / "r.json"
    args = ["build", str(FIX / "tiny-qdq.onnx"), "--engine", str(plan), "--report", str(report)]
    assert main(args) == 0
    assert "5 layers" in capsys.readouterr().out and report.exists()
    monkeypatch.setattr(engine_build, "default_builder", TensorRTBuilder())
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        TensorRTBuilder().build(FIX / "tiny-qdq.onnx", fp16=False)
    assert main(args) == 2
    assert "needs the tensorrt Python package" in capsys.readouterr().err


def test_cut_layer_names_end_in_an_ellipsis(tmp_path: Path, monkeypatch, capsys) -> None:
    """Names cut to fit (summary 70, table 120 characters) are marked, never passed off as real."""
    monkeypatch.setenv("COLUMNS", "260")  # wide enough that rich does not wrap the name cell
    long_name = "/model.1/conv/Conv + /model.1/act/Relu + " * 3 + "/model.2/Add + Relu"
    short_name = "/model.9/conv/Conv"
    assert len(long_name) > 120

    def layer(name: str, dtype: str) -> dict:
        return {
            "Name": name,
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "x", "Format/Datatype": f"Row major linear {dtype}"}],
            "Outputs": [{"Name": "y", "Format/Datatype": f"Row major linear {dtype}"}],
        }

    report = tmp_path / "long.graph.json"
    report.write_text(
        json.dumps(
            {"Layers": [layer(long_name, "FP32"), layer(short_name, "FP32")], "Bindings": []}
        )
    )
    assert main(["inspect", str(report)]) == 0
    out = capsys.readouterr().out
    assert long_name not in out
    assert long_name[:69] + "…" in out  # the summary's non-INT8 list
    table_lines = [line for line in out.splitlines() if long_name[:100] in line]
    assert any(long_name[:119] + "…" in line for line in table_lines), out
    assert short_name in out and short_name + "…" not in out  # short names stay whole
