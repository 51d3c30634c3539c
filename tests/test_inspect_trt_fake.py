"""The TensorRT code paths (``engines.tensorrt_api``) against a stand-in ``tensorrt`` module (no GPU here).

The stand-in mimics the TensorRT 10 Python API surface that qdqopt uses and records the calls,
so these tests check the build recipe (detailed verbosity, INT8 flag, FP16 only when asked,
dynamic dims fixed by a profile, shapes bound before reading the inspector) and .plan reading.
"""

from __future__ import annotations

import json
import sys
import types
from enum import Enum, IntEnum
from pathlib import Path

import pytest

from cli import main
from qdq_optimizer.engines import load_report
from qdq_optimizer.engines.build import build_engine
from qdq_optimizer.engines.tensorrt_api import TensorRTBuilder
from qdq_optimizer.errors import InputError, UsageError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "engines"
REPORT = (FIX / "trt11-io-tensors.graph.json").read_text()


def make_fake_trt(version: str = "10.3.0", has_int8: bool = True, parse_ok: bool = True):
    calls: list = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls

    class Logger:
        WARNING, ERROR = 2, 1

        def __init__(self, level):
            self.level = level

    flags = {"FP16": 0}
    if has_int8:
        flags["INT8"] = 1
    trt.Logger = Logger
    trt.BuilderFlag = Enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = IntEnum(  # pybind11 enums convert with int()
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    )
    trt.ProfilingVerbosity = Enum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "DETAILED": 2})
    trt.MemoryPoolType = Enum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.LayerInformationFormat = Enum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})

    class Tensor:
        name, shape = "images", (-1, 3, 16, 16)

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Tensor()

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse", path))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported"

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            calls.append(("profile", name, mn, opt, mx))

    class Config:
        profiling_verbosity = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", size))

        def set_flag(self, flag):
            calls.append(("flag", flag.name))

        def add_optimization_profile(self, p):
            calls.append(("add_profile",))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("verbosity", config.profiling_verbosity.name))
            return b"SERIALIZED"

    class Context:
        def set_input_shape(self, name, shape):
            calls.append(("input_shape", name, list(shape)))

    class Inspector:
        execution_context = None

        def get_engine_information(self, fmt):
            calls.append(("inspect", fmt.name, self.execution_context is not None))
            return REPORT

    class Engine:
        num_io_tensors = 2

        def create_engine_inspector(self):
            return Inspector()

        def create_execution_context(self):
            return Context()

        def get_tensor_name(self, i):
            return ["images", "logits"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return [-1, 3, 16, 16]

        def get_tensor_profile_shape(self, name, profile):
            return ([1, 3, 16, 16], [1, 3, 16, 16], [1, 3, 16, 16])

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data.startswith(b"SERIAL") else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


def test_builder_recipe(tmp_path: Path, monkeypatch) -> None:
    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    out = build_engine(FIX / "tiny-qdq.onnx", tmp_path / "m.plan", builder=TensorRTBuilder())
    assert (tmp_path / "m.plan").read_bytes() == b"SERIALIZED"
    assert json.loads(out.report_path.read_text()) == json.loads(REPORT)
    assert ("network_flags", 0) in trt.calls  # TRT 10: explicit batch is the default
    assert ("flag", "INT8") in trt.calls and ("flag", "FP16") not in trt.calls
    assert ("verbosity", "DETAILED") in trt.calls
    assert ("profile", "images", [1, 3, 16, 16], [1, 3, 16, 16], [1, 3, 16, 16]) in trt.calls
    assert ("input_shape", "images", [1, 3, 16, 16]) in trt.calls
    assert ("inspect", "JSON", True) in trt.calls


def test_builder_fp16(monkeypatch) -> None:
    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    TensorRTBuilder().build(FIX / "tiny-qdq.onnx", fp16=True)
    assert ("flag", "FP16") in trt.calls and ("flag", "INT8") in trt.calls


def test_builder_trt11_strongly_typed_and_no_fp16(monkeypatch) -> None:
    trt = make_fake_trt("11.0.0", has_int8=False)
    trt.BuilderFlag = Enum("BuilderFlag", {"REFIT": 0})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    TensorRTBuilder().build(FIX / "tiny-qdq.onnx", fp16=False)
    assert ("network_flags", 1 << 1) in trt.calls
    assert not any(c[0] == "flag" for c in trt.calls)
    with pytest.raises(UsageError, match="no FP16 builder flag"):
        TensorRTBuilder().build(FIX / "tiny-qdq.onnx", fp16=True)


def test_builder_trt8_explicit_batch(monkeypatch) -> None:
    trt = make_fake_trt("8.6.1")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    TensorRTBuilder().build(FIX / "tiny-qdq.onnx", fp16=False)
    assert ("network_flags", 1) in trt.calls


def test_parser_error_is_input_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(parse_ok=False))
    with pytest.raises(InputError, match="unsupported"):
        TensorRTBuilder().build(FIX / "tiny-qdq.onnx", fp16=False)


def test_plan_read_through_inspector(tmp_path: Path, monkeypatch, capsys) -> None:
    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"SERIALIZED")
    rep = load_report(plan)
    assert rep.trt_version_guess == "11" and len(rep.layers) == 3
    assert main(["inspect", str(plan), "--expect", "int8", "--summary-only"]) == 0
    bad = tmp_path / "other.engine"
    bad.write_bytes(b"junk")
    assert main(["inspect", str(bad)]) == 2
    assert "cannot deserialize" in capsys.readouterr().err


def test_no_gpu_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    trt = make_fake_trt()

    def no_gpu(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    trt.Builder = trt.Runtime = no_gpu
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"SERIALIZED")
    assert main(["inspect", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "TensorRT could not start" in err and "--exportLayerInfo" in err
    with pytest.raises(Exception, match="CUDA GPU"):
        TensorRTBuilder().build(FIX / "tiny-qdq.onnx", fp16=False)
