"""Fuzzing: corrupted models and engine reports never crash qdqopt.

Hypothesis corrupts valid inputs (bytes: truncate, flip; structure: delete initializers, rewire
inputs, change scales/axes/zero points/opsets/ops/attributes; reports: drop keys, change types,
truncate). Every case runs IN-PROCESS through ``cli.main`` and must end with exit 0, 1 or 2 and at
most one error line, never a traceback (exit 3) and never a hang (a per-case SIGALRM timeout).
The library entry points ``load_model``/``validate_model`` must raise nothing but InputError.

Examples per strategy: ``QDQOPT_FUZZ_EXAMPLES`` (default 60; ``make fuzz`` uses 2000). Set
``QDQOPT_FUZZ_STATS=FILE`` to get the number of cases actually run, per strategy, as JSON.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import math
import os
import signal
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import cli
from qdq_optimizer.errors import InputError
from qdq_optimizer.model_io import load_model
from qdq_optimizer.validate import validate_model

try:
    from hardening_util import qdq_conv_model
except ImportError:  # tests/ imported as a package
    from tests.hardening_util import qdq_conv_model

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ROOT / "fixtures" / "engines"
EXAMPLES = int(os.environ.get("QDQOPT_FUZZ_EXAMPLES", "60"))
CASE_TIMEOUT_S = int(os.environ.get("QDQOPT_FUZZ_TIMEOUT", "30"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the SIGALRM timeout below is the hang guard
    database=None,  # never write .hypothesis/ into the repo
    derandomize=EXAMPLES <= 100,  # the default small run is reproducible
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

STATS: Counter[str] = Counter()


def _write_stats() -> None:
    target = os.environ.get("QDQOPT_FUZZ_STATS")
    if target and STATS:
        path = Path(target)
        old = json.loads(path.read_text()) if path.exists() else {}
        for k, v in STATS.items():
            old[k] = old.get(k, 0) + v
        path.write_text(json.dumps(old, indent=1, sort_keys=True))


atexit.register(_write_stats)


class CaseTimeout(BaseException):
    """Not an Exception, so cli.main's last-line handler cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: int):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran over {seconds} s (hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def available(names: list[str]) -> list[str]:
    out = []
    for n in names:
        try:
            importlib.import_module(cli.SUBCOMMANDS[n][0])
        except ModuleNotFoundError:
            continue
        out.append(n)
    return out


ONNX_COMMANDS = available(["dump", "lint", "optimize", "diff"])


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    with time_limit(CASE_TIMEOUT_S):
        rc = cli.main(argv)
    err = capsys.readouterr().err
    return rc, err


def assert_clean_outcome(rc: int, err: str, what: str) -> None:
    assert "Traceback" not in err, f"{what}: traceback\n{err}"
    assert rc in (0, 1, 2), f"{what}: exit {rc}\n{err}"
    errors = [ln for ln in err.splitlines() if ln.startswith(("qdqopt: ", "Error: "))]
    if rc == 2:
        assert len(errors) == 1, f"{what}: expected one error line\n{err}"
    assert len(errors) <= 1, f"{what}: several error lines\n{err}"


# --------------------------------------------------------------------------- model corruption
def base_models() -> list[bytes]:
    models = [qdq_conv_model().SerializeToString()]
    tiny = ENGINES / "tiny-qdq.onnx"
    if tiny.exists():
        models.append(tiny.read_bytes())
    return models


BASES = base_models()
SPECIAL_FLOATS = [0.0, -0.5, math.nan, math.inf, -math.inf, 1e-38, 1e38, 0.02, 1.0]
ZP_TYPES = [
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT32,
    TensorProto.INT16,
    TensorProto.INT4,
    TensorProto.UINT4,
    TensorProto.FLOAT8E4M3FN,
    TensorProto.FLOAT,
]
OPS = ["Relu", "Conv", "Concat", "QuantizeLinear", "DequantizeLinear", "MaxPool", "Add", "Foo"]


@st.composite
def byte_corruptions(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    kind = draw(st.sampled_from(["truncate", "flip", "both"]))
    if kind in ("flip", "both"):
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
    if kind in ("truncate", "both"):
        data = data[: draw(st.integers(0, len(data) - 1))]
    return bytes(data)


def _tensor_names(model: onnx.ModelProto) -> list[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {i.name for i in model.graph.input}
    for n in model.graph.node:
        names.update(n.output)
    return sorted(names)


@st.composite
def structural_corruptions(draw) -> bytes:
    model = onnx.ModelProto()
    model.ParseFromString(draw(st.sampled_from(BASES)))
    g = model.graph
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                [
                    "del_init",
                    "rewire",
                    "scale",
                    "axis",
                    "zero_point",
                    "del_node",
                    "op_type",
                    "drop_attr",
                    "dup_output",
                    "opset",
                    "dims",
                ]
            )
        )
        nodes = list(g.node)
        inits = list(g.initializer)
        if op == "del_init" and inits:
            del g.initializer[draw(st.integers(0, len(inits) - 1))]
        elif op == "rewire" and nodes:
            n = g.node[draw(st.integers(0, len(nodes) - 1))]
            if n.input:
                names = _tensor_names(model) + ["", "ghost"]
                n.input[draw(st.integers(0, len(n.input) - 1))] = draw(st.sampled_from(names))
        elif op == "scale":
            targets = [t for t in inits if "scale" in t.name] or inits
            if targets:
                t = draw(st.sampled_from(targets))
                size = draw(st.sampled_from([None, 0, 1, 2, 3, 4, 5, 16]))
                values = draw(st.lists(st.sampled_from(SPECIAL_FLOATS), min_size=1, max_size=16))
                arr = np.resize(np.asarray(values, np.float32), 1 if size is None else size)
                t.CopyFrom(
                    onnx.numpy_helper.from_array(arr.reshape(()) if size is None else arr, t.name)
                )
        elif op == "axis":
            qdq = [n for n in g.node if n.op_type.endswith("QuantizeLinear")]
            if qdq:
                n = draw(st.sampled_from(qdq))
                for a in list(n.attribute):
                    if a.name == "axis":
                        n.attribute.remove(a)
                n.attribute.append(helper.make_attribute("axis", draw(st.integers(-6, 6))))
        elif op == "zero_point":
            targets = [t for t in inits if "zp" in t.name or "zero" in t.name] or inits
            if targets:
                t = draw(st.sampled_from(targets))
                dtype = draw(st.sampled_from(ZP_TYPES))
                n = draw(st.integers(0, 5))
                low = 0 if dtype in (TensorProto.UINT8, TensorProto.UINT4) else -8
                vals = draw(st.lists(st.integers(low, 7), min_size=n, max_size=n))
                dims = [] if n == 1 and draw(st.booleans()) else [n]
                t.CopyFrom(helper.make_tensor(t.name, dtype, dims, vals))
        elif op == "del_node" and nodes:
            del g.node[draw(st.integers(0, len(nodes) - 1))]
        elif op == "op_type" and nodes:
            g.node[draw(st.integers(0, len(nodes) - 1))].op_type = draw(st.sampled_from(OPS))
        elif op == "drop_attr" and nodes:
            n = g.node[draw(st.integers(0, len(nodes) - 1))]
            if n.attribute:
                del n.attribute[draw(st.integers(0, len(n.attribute) - 1))]
        elif op == "dup_output" and nodes:
            n = g.node[draw(st.integers(0, len(nodes) - 1))]
            if n.output:
                n.output[0] = draw(st.sampled_from(_tensor_names(model)))
        elif op == "opset":
            model.opset_import[0].version = draw(st.integers(1, 25))
        elif op == "dims" and inits:
            t = g.initializer[draw(st.integers(0, len(inits) - 1))]
            del t.dims[:]
            t.dims.extend(draw(st.lists(st.integers(-1, 9), max_size=4)))
    return model.SerializeToString()


def _check_library(path: Path) -> None:
    """load_model + validate_model raise InputError or nothing."""
    with time_limit(CASE_TIMEOUT_S):
        try:
            validate_model(load_model(path))
        except InputError as exc:
            assert "\n" not in str(exc)


def _fuzz_model(data: bytes, command: str, capsys, kind: str) -> None:
    STATS[kind] += 1
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.onnx"
        src.write_bytes(data)
        (Path(d) / "base.onnx").write_bytes(BASES[0])
        _check_library(src)
        if not command:
            return
        argv = {
            "dump": ["dump", str(src)],
            "lint": ["lint", str(src), "--rules", "cleanup"],
            "optimize": ["optimize", str(src), str(Path(d) / "out.onnx"), "--rules", "cleanup"],
            "diff": ["diff", str(Path(d) / "base.onnx"), str(src)],
        }[command]
        rc, err = run_cli(argv, capsys)
        assert_clean_outcome(rc, err, f"{kind} {command}")
        assert src.read_bytes() == data, "input modified"
        leftovers = [p.name for p in Path(d).iterdir() if p.name.endswith(".tmp")]
        assert not leftovers


COMMAND = st.sampled_from(ONNX_COMMANDS or [""])


@FUZZ_SETTINGS
@given(data=byte_corruptions(), command=COMMAND)
def test_fuzz_model_bytes(data: bytes, command: str, capsys) -> None:
    _fuzz_model(data, command, capsys, "model-bytes")


@FUZZ_SETTINGS
@given(data=structural_corruptions(), command=COMMAND)
def test_fuzz_model_structure(data: bytes, command: str, capsys) -> None:
    _fuzz_model(data, command, capsys, "model-structure")


# --------------------------------------------------------------------------- report corruption
def base_reports() -> list[str]:
    reports = (
        sorted(
            p.read_text() for p in ENGINES.glob("*.json") if p.is_file() and "profile" not in p.name
        )
        if ENGINES.is_dir()
        else []
    )
    reports.append(
        json.dumps(
            {
                "Layers": [
                    {
                        "Name": "conv + relu",
                        "LayerType": "CaskConvolution",
                        "Inputs": [{"Name": "x", "Format/Datatype": "Int8", "Dimensions": [1, 8]}],
                        "Outputs": [{"Name": "y", "Format/Datatype": "Int8", "Dimensions": [1, 8]}],
                        "Metadata": "[ONNX Layer: conv]",
                    },
                    {
                        "Name": "q",
                        "LayerType": "Reformat",
                        "Origin": "QDQ",
                        "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}],
                        "Outputs": [{"Name": "z", "Format/Datatype": "Int8"}],
                    },
                ],
                "Bindings": ["x", "z"],
            }
        )
    )
    return reports


REPORTS = base_reports()


def _parseable(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


JSON_REPORTS = [t for t in REPORTS if _parseable(t)]
JUNK_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.just([]),
    st.just({}),
    st.lists(st.integers(), max_size=3),
    st.just("N/A due to dynamic shapes"),
    st.just("Int8"),
)


def _paths(doc) -> list[tuple]:
    """Every (container, key) pair in a JSON document, found iteratively."""
    out = []
    todo = [doc]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            out.append((node, k))
            if isinstance(v, (dict, list)):
                todo.append(v)
    return out


@st.composite
def report_corruptions(draw) -> bytes:
    kind = draw(st.sampled_from(["drop", "retype", "drop+retype", "truncate", "flip", "top"]))
    text = draw(st.sampled_from(REPORTS if kind in ("truncate", "flip") else JSON_REPORTS))
    if kind in ("truncate", "flip"):
        data = bytearray(text.encode())
        if kind == "flip":
            for _ in range(draw(st.integers(1, 6))):
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= draw(st.integers(1, 255))
        else:
            data = data[: draw(st.integers(0, len(data) - 1))]
        return bytes(data)
    doc = json.loads(text)
    if kind == "top":
        doc = draw(
            st.sampled_from(
                [
                    doc.get("Layers") if isinstance(doc, dict) else doc,
                    42,
                    "Layers",
                    None,
                    [doc],
                    {"layers": doc},
                ]
            )
        )
        return json.dumps(doc).encode()
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc) if isinstance(doc, (dict, list)) else []
        if not paths:
            break
        container, key = draw(st.sampled_from(paths))
        if "drop" in kind and (kind == "drop" or draw(st.booleans())):
            del container[key]
        else:
            container[key] = draw(JUNK_VALUES)
    return json.dumps(doc, allow_nan=True).encode()


INSPECT_AVAILABLE = bool(available(["inspect"]))


@pytest.mark.skipif(not INSPECT_AVAILABLE, reason="inspect command missing")
@FUZZ_SETTINGS
@given(
    data=report_corruptions(),
    extra=st.sampled_from([[], ["--expect", "int8"], ["--format", "json"], ["--format", "dot"]]),
)
def test_fuzz_engine_reports(data: bytes, extra: list[str], capsys) -> None:
    STATS["engine-report"] += 1
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "engine.graph.json"
        src.write_bytes(data)
        rc, err = run_cli(["inspect", str(src), "--summary-only", *extra], capsys)
        assert_clean_outcome(rc, err, "inspect")
        assert src.read_bytes() == data


def test_fuzz_harness_catches_a_crash(capsys, monkeypatch) -> None:
    """The oracle is not vacuous: an unexpected exception inside a command is reported."""
    command = importlib.import_module(cli.SUBCOMMANDS["inspect"][0]).command

    def boom(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(command, "callback", boom)
    rc, err = run_cli(["inspect", "whatever.json"], capsys)
    with pytest.raises(AssertionError, match="exit 3"):
        assert_clean_outcome(rc, err, "inspect")


def test_fuzz_timeout_fires() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGALRM needs the main thread")
    with pytest.raises(CaseTimeout), time_limit(1):
        import time

        time.sleep(5)
