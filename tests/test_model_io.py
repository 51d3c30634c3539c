"""model_io: every refusal of load_model, and atomic / external-data saving."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from qdq_optimizer import model_io
from qdq_optimizer.errors import InputError, UsageError
from qdq_optimizer.model_io import load_model, save_model

try:
    from hardening_util import qdq_conv_model
except ImportError:  # tests/ imported as a package
    from tests.hardening_util import qdq_conv_model


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(qdq_conv_model().SerializeToString())
    return p


def _external_model(tmp_path: Path, location: str = "m.onnx.data") -> Path:
    """A model whose weight ``w_q`` and ``bias`` live in an external file."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    m = qdq_conv_model(channels=64)
    onnx.save_model(
        m,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        location="m.onnx.data",
        size_threshold=128,
    )
    if location != "m.onnx.data":
        m2 = onnx.load(str(folder / "m.onnx"), load_external_data=False)
        for t in m2.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        (folder / "m.onnx").write_bytes(m2.SerializeToString())
    return folder / "m.onnx"


def _refusal(path: Path, *needles: str) -> str:
    with pytest.raises(InputError) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_loads_a_valid_model(model_file: Path) -> None:
    m = load_model(model_file)
    assert [n.name for n in m.graph.node][:2] == ["q_in", "dq_in"]


def test_missing_file(tmp_path: Path) -> None:
    _refusal(tmp_path / "nope.onnx", "not found", "nope.onnx")


def test_folder(tmp_path: Path) -> None:
    _refusal(tmp_path, "folder")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "e.onnx"
    p.write_bytes(b"")
    _refusal(p, "empty")


def test_unreadable_file(model_file: Path, monkeypatch) -> None:
    if os.geteuid() == 0:  # root reads anything: simulate the permission check failing
        monkeypatch.setattr(model_io.os, "access", lambda *a, **k: False)
    model_file.chmod(0)
    try:
        _refusal(model_file, "permission")
    finally:
        model_file.chmod(0o644)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (json.dumps({"Layers": []}).encode(), "JSON"),
        (b"hello, this is a text file\n", "ONNX"),
        (b"\x80\x04\x95 pickle", "pickle"),
    ],
)
def test_not_onnx(tmp_path: Path, content: bytes, kind: str) -> None:
    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    _refusal(p, kind)


def test_zip_file(tmp_path: Path) -> None:
    p = tmp_path / "ckpt.onnx"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", b"x" * 100)
    _refusal(p, "zip")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_protobuf(model_file: Path, tmp_path: Path, fraction: float) -> None:
    data = model_file.read_bytes()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: int(len(data) * fraction)])
    _refusal(p, "t.onnx")


def test_external_data_loads(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    m = load_model(path)
    w = next(t for t in m.graph.initializer if t.name == "w_q")
    assert w.data_location == TensorProto.DEFAULT
    assert numpy_helper.to_array(w).shape == (64, 3, 3, 3)


def test_external_data_not_loaded_on_request(tmp_path: Path) -> None:
    m = load_model(_external_model(tmp_path), load_external_data=False)
    w = next(t for t in m.graph.initializer if t.name == "w_q")
    assert w.data_location == TensorProto.EXTERNAL


def test_missing_external_data(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    (path.parent / "m.onnx.data").unlink()
    _refusal(path, "not found", "m.onnx.data")


def test_short_external_data(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    data = path.parent / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:-10])
    _refusal(path, "too short")


def test_external_length_mismatch(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    m = onnx.load(str(path), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.name == "w_q")
    for e in t.external_data:
        if e.key == "length":
            e.value = str(int(e.value) - 1)
    path.write_bytes(m.SerializeToString())
    _refusal(path, "does not match its shape")


@pytest.mark.parametrize(
    ("location", "needle"),
    [
        ("/etc/passwd", "absolute"),
        ("../secret.bin", "leaves the model's folder"),
        ("sub/../../secret.bin", "leaves the model's folder"),
    ],
)
def test_external_location_outside_folder(tmp_path: Path, location: str, needle: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 10_000)
    path = _external_model(tmp_path, location)
    _refusal(path, needle)


def test_external_symlink_out_of_folder(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 100_000)
    path = _external_model(tmp_path, "link.bin")
    (path.parent / "link.bin").symlink_to(tmp_path / "secret.bin")
    _refusal(path, "outside the model's folder")


def test_save_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    assert save_model(qdq_conv_model(), out) is None
    assert load_model(out).graph.node[0].name == "q_in"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx"]


@pytest.mark.parametrize("external", [False, True])
def test_failure_mid_save_keeps_previous_output(
    tmp_path: Path, monkeypatch, external: bool
) -> None:
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous")
    (tmp_path / "o.onnx.data").write_bytes(b"previous data")
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt  # as if Ctrl-C arrived while writing

    if external:
        monkeypatch.setattr(model_io, "_externalize", boom)
    else:
        monkeypatch.setattr(model_io.Path, "write_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        save_model(qdq_conv_model(channels=64), out, external_data=external)
    monkeypatch.undo()
    assert calls
    assert out.read_bytes() == b"previous"
    assert (tmp_path / "o.onnx.data").read_bytes() == b"previous data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx", "o.onnx.data"]


def test_save_refuses_to_overwrite_input(model_file: Path) -> None:
    m = load_model(model_file)
    with pytest.raises(UsageError, match="input"):
        save_model(m, model_file)


def test_save_refuses_input_data_file(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    m = load_model(path)
    # <out>.data would be the input's own data file
    with pytest.raises(UsageError, match="input"):
        save_model(m, path.parent / "m.onnx", external_data=True)


def test_save_refuses_unloaded_external_data(tmp_path: Path) -> None:
    m = load_model(_external_model(tmp_path), load_external_data=False)
    with pytest.raises(UsageError, match="external data"):
        save_model(m, tmp_path / "o.onnx")


def test_save_with_external_data_roundtrip(tmp_path: Path) -> None:
    m = qdq_conv_model(channels=64)
    before = m.SerializeToString()
    out = tmp_path / "o.onnx"
    data = save_model(m, out, external_data=True)
    assert data == tmp_path / "o.onnx.data"
    assert m.SerializeToString() == before  # the in-memory model is not modified
    header = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in header.graph.initializer)
    back = load_model(out)
    for a, b in zip(m.graph.initializer, back.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx", "o.onnx.data"]


def test_save_switches_to_external_data_when_big(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_io, "PROTO_LIMIT", 1000)
    data = save_model(qdq_conv_model(channels=64), tmp_path / "o.onnx")
    assert data is not None and data.exists()


def test_fifo_and_devices_are_refused_without_reading(tmp_path: Path) -> None:
    """Reading a FIFO or /dev/zero would hang or never end: refuse non-regular files."""
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    _refusal(fifo, "not a regular file")
    _refusal(Path("/dev/zero"), "not a regular file")


def test_external_data_fifo_is_refused(tmp_path: Path) -> None:
    path = _external_model(tmp_path, "pipe.bin")
    os.mkfifo(path.parent / "pipe.bin")
    _refusal(path, "not a regular file")


def test_external_data_huge_dims(tmp_path: Path) -> None:
    path = _external_model(tmp_path)
    m = onnx.load(str(path), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.name == "w_q")
    del t.dims[:]
    t.dims.extend([2**40, 2**40])
    path.write_bytes(m.SerializeToString())
    _refusal(path, "does not match its shape")


def test_non_utf8_names_are_refused(model_file: Path, tmp_path: Path) -> None:
    data = model_file.read_bytes().replace(b"relu0", b"rel\xff0")
    p = tmp_path / "bad.onnx"
    p.write_bytes(data)
    _refusal(p, "UTF-8")


def test_inline_weight_with_wrong_length(tmp_path: Path) -> None:
    m = qdq_conv_model()
    t = next(t for t in m.graph.initializer if t.name == "w_q")
    t.raw_data = t.raw_data + b"\0"
    p = tmp_path / "w.onnx"
    p.write_bytes(m.SerializeToString())
    _refusal(p, "'w_q'", "bytes")


def test_external_save_moves_constant_node_tensors_too(tmp_path: Path) -> None:
    m = qdq_conv_model()
    value = numpy_helper.from_array(np.arange(5000, dtype=np.float32), "cv")
    m.graph.node.append(onnx.helper.make_node("Constant", [], ["cbig"], name="cbig", value=value))
    m.graph.output.append(onnx.helper.make_tensor_value_info("cbig", TensorProto.FLOAT, [5000]))
    save_model(m, tmp_path / "o.onnx", external_data=True)
    header = onnx.load(str(tmp_path / "o.onnx"), load_external_data=False)
    assert header.graph.node[-1].attribute[0].t.data_location == TensorProto.EXTERNAL
    assert m.graph.node[-1].attribute[0].t.data_location == TensorProto.DEFAULT  # untouched
    back = load_model(tmp_path / "o.onnx")
    np.testing.assert_array_equal(
        numpy_helper.to_array(back.graph.node[-1].attribute[0].t), np.arange(5000)
    )
