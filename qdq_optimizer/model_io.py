"""Loading and saving ONNX models safely: models come from elsewhere (CI, other teams).

``load_model`` refuses anything that is not a readable ONNX protobuf with a one-line
:class:`~qdq_optimizer.errors.InputError`, and checks every external-data reference (location
inside the model's folder, offset/length inside the file, length matching the tensor) *before*
reading a byte of it, so a hostile model cannot make qdqopt read outside what it was given.

``save_model`` writes atomically (temp file + rename, via :mod:`qdq_optimizer.fileio`). Models too
big for one protobuf (2 GiB) are written with their weights in ``<out>.data`` next to the output,
built tensor by tensor so the in-memory model is neither copied nor modified.

The one home of model size: ``PROTO_LIMIT`` and ``model_size`` decide when a model is saved with
external data, checked by path (``check_model``) or handed to ONNX Runtime as a file (``runtime``).
``finalize`` turns the rewritten graph back into a checked model, ready to save.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, external_data_helper

from .errors import InputError, UsageError
from .fileio import atomic_path

if TYPE_CHECKING:  # finalize takes a QGraph; model_io imports no graph code at run time
    from .graph import QGraph

# Protobuf cannot serialize or parse a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
# Above this (estimated by ``model_size``) a model is saved with external data, checked by path and
# handed to ONNX Runtime as a file: a little below the hard limit, as the estimate is not exact.
PROTO_LIMIT = PROTOBUF_LIMIT - 64 * 2**20
# Tensors smaller than this stay inline when a model is saved with external data.
EXTERNAL_MIN_BYTES = 1024

# Files read by load_model in this process (model and external data), resolved. save_model refuses
# to write onto any of them, so an input is never overwritten, even through its data file.
_INPUT_FILES: set[str] = set()

# Element sizes of fixed-size tensor types (bits); strings/undefined are not in here.
_ELEM_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32,
    TensorProto.UINT8: 8,
    TensorProto.INT8: 8,
    TensorProto.UINT16: 16,
    TensorProto.INT16: 16,
    TensorProto.INT32: 32,
    TensorProto.INT64: 64,
    TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16,
    TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32,
    TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64,
    TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16,
}
for _name, _bits in (
    ("FLOAT8E4M3FN", 8),
    ("FLOAT8E4M3FNUZ", 8),
    ("FLOAT8E5M2", 8),
    ("FLOAT8E5M2FNUZ", 8),
    ("UINT4", 4),
    ("INT4", 4),
    ("FLOAT4E2M1", 4),
    ("FLOAT8E8M0", 8),
    ("UINT2", 2),
    ("INT2", 2),
):
    if hasattr(TensorProto, _name):
        _ELEM_BITS[getattr(TensorProto, _name)] = _bits


def tensor_nbytes(tensor: TensorProto) -> int | None:
    """Bytes of a tensor's raw data from its dims and type; None for strings/unknown types."""
    bits = _ELEM_BITS.get(tensor.data_type)
    if bits is None:
        return None
    count = math.prod(int(d) for d in tensor.dims)
    return (count * bits + 7) // 8


# Field holding typed (non-raw) data, for types other than int32_data's.
_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.COMPLEX64: "float_data",
    TensorProto.COMPLEX128: "double_data",
}
_PACKED_4BIT = {
    getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)
}
_RAW_TAG_BYTES = 1  # field 9, wire type 2


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


_COPY_BELOW = 1 << 20  # raw_data_len copies payloads below this size (bytes)
_VALID_DATA_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}


def raw_data_len(t: TensorProto) -> int | None:
    """len(t.raw_data) without copying the bytes out of protobuf (None if unset).

    The tensor's serialized size minus that of a shell holding every other field leaves the
    raw_data field's tag + length varint + payload; solve for the payload.
    """
    if not t.HasField("raw_data"):
        return None
    if t.ByteSize() < _COPY_BELOW:
        return len(t.raw_data)  # a small copy is cheaper than building the shell
    shell = TensorProto()
    for field in _TENSOR_DESCRIPTOR.fields:
        name = field.name
        if name == "raw_data":
            continue
        if _is_repeated(field):
            getattr(shell, name).extend(getattr(t, name))
        elif t.HasField(name):
            if field.type == _MESSAGE:
                getattr(shell, name).CopyFrom(getattr(t, name))
            else:
                setattr(shell, name, getattr(t, name))
    rest = t.ByteSize() - shell.ByteSize() - _RAW_TAG_BYTES
    for k in range(1, 11):
        if rest - k >= 0 and _varint_len(rest - k) == k:
            return rest - k
    return len(t.raw_data)  # not reached for well-formed sizes; fall back to a copy


def check_tensor_data(t: TensorProto, what: str) -> None:
    """Data length must match dims and type: catches truncated or corrupted weights early."""
    if any(d < 0 for d in t.dims):
        raise InputError(f"{what} has a negative dimension {list(t.dims)}")
    if t.data_type not in _VALID_DATA_TYPES:
        raise InputError(f"{what} has an invalid data type {t.data_type}")
    if t.data_location == TensorProto.EXTERNAL or t.data_type == TensorProto.STRING:
        return  # external: offsets/lengths are checked against the file by load_model
    expected = tensor_nbytes(t)
    if expected is None:
        return
    got = raw_data_len(t)
    if got is not None:
        if got != expected:
            raise InputError(
                f"{what} holds {got} bytes but its shape {list(t.dims)} needs {expected}"
            )
        return
    count = math.prod(int(d) for d in t.dims)
    field = _TYPED_FIELD.get(t.data_type, "int32_data")
    if t.data_type in _PACKED_4BIT:
        want = (count + 1) // 2
    elif t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        want = 2 * count
    else:
        want = count
    got = len(getattr(t, field))
    if got != want:
        raise InputError(
            f"{what} holds {got} values in {field} but its shape {list(t.dims)} needs {want}"
        )


# ---------------------------------------------------------------------------------------- load
def load_model(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model, refusing unreadable, non-ONNX or unsafe input with an InputError."""
    p = Path(path)
    size = _check_input_file(p, what="model")
    if size == 0:
        raise InputError(f"{p}: empty file, not an ONNX model")
    if size > PROTOBUF_LIMIT:
        raise InputError(
            f"{p}: {size} bytes is over protobuf's 2 GiB limit; save big models with external data"
        )
    try:
        with open(p, "rb") as f:
            head = f.read(16)
            f.seek(0)
            data = f.read()
    except OSError as exc:
        raise InputError(f"cannot read model {p}: {exc.strerror or exc}") from None
    kind = _sniff_non_onnx(head)
    if kind:
        raise InputError(f"{p}: not an ONNX model (looks like {kind})")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"{p}: not a valid ONNX protobuf (truncated or corrupt: {_short(exc)})"
        ) from None
    finally:
        del data
    if not model.HasField("graph") or model.ir_version <= 0 or not model.opset_import:
        missing = (
            "graph"
            if not model.HasField("graph")
            else "ir_version"
            if model.ir_version <= 0
            else "opset_import"
        )
        raise InputError(f"{p}: not a valid ONNX model (no {missing}; truncated or not ONNX?)")
    bad = _find_non_utf8(model)
    if bad:
        raise InputError(f"{p}: corrupt model: {bad} is not valid UTF-8 text")
    _INPUT_FILES.add(str(p.resolve()))
    base = p.resolve().parent
    refs = list(_external_refs(model))
    for tensor in refs:
        _check_external_ref(tensor, base, p)
    if load_external_data and refs:
        _load_external(model, refs, base, p)
    for tensor in external_data_helper._get_all_tensors(model):
        check_tensor_data(tensor, f"{p}: tensor '{tensor.name}'")
    return model


_TENSOR_DESCRIPTOR = TensorProto.DESCRIPTOR
_STRING, _MESSAGE = 9, 11  # FieldDescriptor.TYPE_STRING, TYPE_MESSAGE


def _bad_string(root) -> str | None:  # noqa: ANN001 - any protobuf message
    """The first string field holding non-UTF-8 bytes (protobuf then returns bytes), or None.

    Iterative; tensors are checked field by field so their raw data is never copied.
    """
    stack = [root]
    while stack:
        msg = stack.pop()
        if msg.DESCRIPTOR is _TENSOR_DESCRIPTOR:
            if type(msg.name) is not str:
                return "TensorProto.name"
            if type(msg.doc_string) is not str:
                return "TensorProto.doc_string"
            stack.extend(msg.external_data)
            continue
        for field, value in msg.ListFields():
            if field.type == _STRING:
                if _is_repeated(field):
                    if any(type(x) is not str for x in value):
                        return f"{msg.DESCRIPTOR.name}.{field.name}"
                elif type(value) is not str:
                    return f"{msg.DESCRIPTOR.name}.{field.name}"
            elif field.type == _MESSAGE:
                if _is_repeated(field):
                    stack.extend(value)
                else:
                    stack.append(value)
    return None


def _find_non_utf8(model: onnx.ModelProto) -> str | None:
    """Describe where a model holds non-UTF-8 text (a corrupt file), naming the node if any."""
    if _bad_string(model) is None:
        return None
    for i, node in enumerate(model.graph.node):
        where = _bad_string(node)
        if where:
            name = node.name if type(node.name) is str and node.name else f"#{i}"
            return f"{where} of node {name}"
    for t in model.graph.initializer:
        where = _bad_string(t)
        if where:
            return f"{where} of an initializer" + (f" '{t.name}'" if type(t.name) is str else "")
    return _bad_string(model)


def _check_input_file(p: Path, *, what: str) -> int:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {p}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{what} path is a folder, not a file: {p}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} path is not a regular file: {p}")
    if not os.access(p, os.R_OK):
        raise InputError(f"cannot read {what} {p}: permission denied")
    return st.st_size


def _sniff_non_onnx(head: bytes) -> str | None:
    """Name the format of a file that is clearly not ONNX, from its first bytes."""
    stripped = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "a zip archive, e.g. a PyTorch checkpoint"
    if head.startswith(b"\x80\x02") or head.startswith(b"\x80\x04") or head.startswith(b"\x80\x05"):
        return "a Python pickle"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy array"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    if stripped[:1] in (b"{", b"["):
        return "JSON"
    if stripped.startswith(b"<"):
        return "XML/HTML"
    if stripped.startswith(b"ir_version") or stripped.startswith(b"graph {"):
        return "ONNX text format; convert it to binary protobuf"
    return None


def _external_refs(model: onnx.ModelProto) -> Iterator[TensorProto]:
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            yield tensor


def _check_external_ref(tensor: TensorProto, base: Path, model_path: Path) -> None:
    """Refuse unsafe or inconsistent external data before anything is read."""
    name = tensor.name or "<unnamed>"
    info: dict[str, str] = {}
    for entry in tensor.external_data:
        info[entry.key] = entry.value
    loc = info.get("location", "")
    where = f"{model_path}: tensor '{name}'"
    if not loc:
        raise InputError(f"{where}: external data has no location")
    if "\x00" in loc:
        raise InputError(f"{where}: external data location contains a NUL byte")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise InputError(f"{where}: external data location '{loc}' is absolute; refused")
    parts = loc.replace("\\", "/").split("/")
    if ".." in parts:
        raise InputError(f"{where}: external data location '{loc}' leaves the model's folder")
    target = (base / loc).resolve()
    if target != base and base not in target.parents:
        raise InputError(
            f"{where}: external data location '{loc}' resolves outside the model's folder"
        )
    size = _check_input_file(target, what=f"external data of tensor '{name}'")
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise InputError(f"{where}: external data offset/length is not an integer") from None
    if offset < 0 or (length is not None and length < 0):
        raise InputError(f"{where}: external data offset/length is negative")
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"{where}: negative dimension in {list(tensor.dims)}")
    expected = tensor_nbytes(tensor)
    available = size - offset
    if offset > size:
        raise InputError(f"{where}: external data offset {offset} is past the end of '{loc}'")
    if length is None:
        length = available
    if length > available:
        raise InputError(
            f"{where}: external data file '{loc}' is too short "
            f"({size} bytes, needs {offset + length})"
        )
    if expected is not None and length != expected:
        raise InputError(
            f"{where}: external data length {length} does not match its shape "
            f"{list(tensor.dims)} ({expected} bytes)"
        )


def _load_external(
    model: onnx.ModelProto, refs: Iterable[TensorProto], base: Path, model_path: Path
) -> None:
    """Read each checked reference into raw_data, one tensor at a time (no whole-file copies)."""
    handles: dict[Path, object] = {}
    try:
        for tensor in refs:
            info = {e.key: e.value for e in tensor.external_data}
            target = (base / info["location"]).resolve()
            f = handles.get(target)
            if f is None:
                try:
                    f = handles[target] = open(target, "rb")  # noqa: SIM115 - closed below
                except OSError as exc:
                    raise InputError(
                        f"cannot read external data {target}: {exc.strerror or exc}"
                    ) from None
                _INPUT_FILES.add(str(target))
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else -1
            f.seek(offset)  # type: ignore[attr-defined]
            data = f.read(length)  # type: ignore[attr-defined]
            if length >= 0 and len(data) != length:
                raise InputError(
                    f"{model_path}: external data of tensor '{tensor.name}' changed while reading"
                )
            tensor.raw_data = data
            del data
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]
    finally:
        for f in handles.values():
            f.close()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- finish, check
# What onnx's checker and shape inference raise for an invalid model (ValueError: e.g. a tensor of
# data type 0, which the C++ inference rejects before its own error types apply).
CHECK_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError)


def finalize(
    graph: QGraph, reference: onnx.ModelProto | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """Cleanup, topological export, shape inference and ``onnx.checker`` full check.

    A failing check is our bug (internal error) unless the input model fails it too, in which
    case it becomes a warning: we do not reject models for problems we did not introduce."""
    graph.cleanup()
    model = graph.to_model()
    warnings: list[str] = []
    error = None
    if model_size(model) < PROTO_LIMIT:
        # Strict shape inference (what full_check adds to the checker) once, keeping its result.
        try:
            model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except CHECK_ERRORS as exc:
            error = " ".join(str(exc).split())[:400]
        if error is None:
            error = check_model(model, full=False)
    else:
        error = check_model(model)
    if error is not None:
        input_error = check_model(reference) if reference is not None else None
        if input_error is None:
            raise RuntimeError(f"optimized model fails onnx.checker: {error}")
        warnings.append(
            f"onnx.checker: the input model already fails the full check: {input_error}"
        )
        return model, warnings
    return model, warnings


def check_model(model: onnx.ModelProto, full: bool = True) -> str | None:
    """None when ``onnx.checker`` (full check: incl. strict shape inference) accepts the model."""
    try:
        if model_size(model) < PROTO_LIMIT:
            onnx.checker.check_model(model, full_check=full)
        else:
            # save_model writes a header copy and the weights beside it without touching
            # ``model`` (onnx.save_model with external data would rewrite it in place).
            with tempfile.TemporaryDirectory(prefix="qdqopt-check-") as tmp:
                path = Path(tmp) / "model.onnx"
                save_model(model, path, external_data=True)
                onnx.checker.check_model(os.fspath(path), full_check=full)
    except CHECK_ERRORS as exc:
        return " ".join(str(exc).split())[:400]
    return None


# ---------------------------------------------------------------------------------------- save
def save_model(
    model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None
) -> Path | None:
    """Write ``model`` atomically; returns the external data file written, if any.

    ``external_data=None`` picks external data only when the model would not fit one protobuf.
    The data file is ``<out>.data`` next to ``path``; both files appear (renamed) together.
    """
    out = Path(path)
    data_path = out.with_name(out.name + ".data")
    for target in (out, data_path):
        if str(target.resolve()) in _INPUT_FILES:
            raise UsageError(f"refusing to overwrite an input file: {target}")
    if not out.parent.is_dir():
        raise UsageError(f"output folder does not exist: {out.parent}")
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            raise UsageError(
                f"tensor '{tensor.name}' still refers to external data that was not loaded; "
                "load the model with load_external_data=True before saving it elsewhere"
            )
    if external_data is None:
        external_data = model_size(model) >= PROTO_LIMIT
    if not external_data:
        with atomic_path(out) as tmp:
            try:
                blob = model.SerializeToString()
            except ValueError as exc:  # message too large
                raise InputError(f"cannot serialize model for {out}: {_short(exc)}") from None
            tmp.write_bytes(blob)
            del blob
        return None
    with contextlib.ExitStack() as stack:
        tmp_data = stack.enter_context(atomic_path(data_path))
        tmp_out = stack.enter_context(atomic_path(out))
        header = _write_external(model, tmp_data, data_path.name)
        tmp_out.write_bytes(header.SerializeToString())
        del header
        # Rename both with SIGINT/SIGTERM held back, so an interrupt cannot split the pair.
        with _signals_deferred():
            stack.close()
    return data_path


def model_size(model: onnx.ModelProto) -> int:
    """Serialized size of a model, exact below the limit; above it an estimate that does not
    serialize (protobuf cannot size a message over 2 GiB): tensor payloads plus everything else."""
    graph = model.graph
    total = 0
    for t in graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    if total < PROTO_LIMIT // 2:
        return model.ByteSize()
    total += sum(n.ByteSize() for n in graph.node)
    for vi in (graph.input, graph.output, graph.value_info):
        total += sum(v.ByteSize() for v in vi)
    total += sum(f.ByteSize() for f in model.functions)
    return total


def _write_external(model: onnx.ModelProto, data_file: Path, location: str) -> onnx.ModelProto:
    """Build a header model whose large initializers point into ``data_file``; write the data.

    Top-level initializers are never copied whole: each one's bytes are written and a small
    reference tensor is put in the header instead. Everything else is copied (it is small).
    """
    header = onnx.ModelProto()
    _copy_fields_except(model, header, "graph")
    graph = model.graph
    hgraph = header.graph
    _copy_fields_except(graph, hgraph, "initializer")
    offset = 0
    with open(data_file, "wb") as f:
        for src in graph.initializer:
            dst = hgraph.initializer.add()
            offset = _externalize(src, dst, f, offset, location)
        # Tensors inside nodes (Constant values, subgraph initializers) were copied; move the
        # large ones out too so the header stays small.
        for tensor in external_data_helper._get_attribute_tensors(header):
            if tensor.HasField("raw_data") and len(tensor.raw_data) >= EXTERNAL_MIN_BYTES:
                scratch = TensorProto()
                offset = _externalize(tensor, scratch, f, offset, location)
                tensor.CopyFrom(scratch)
    return header


def _externalize(src: TensorProto, dst: TensorProto, f, offset: int, location: str) -> int:  # noqa: ANN001
    """Write ``src``'s data at ``offset`` (4 KiB aligned) and make ``dst`` refer to it."""
    if src.data_type == TensorProto.STRING or src.ByteSize() < EXTERNAL_MIN_BYTES:
        dst.CopyFrom(src)
        return offset
    if src.HasField("raw_data"):
        data = src.raw_data
    else:
        data = onnx.numpy_helper.to_array(src).tobytes()
    pad = (-offset) % 4096
    if pad:
        f.write(b"\0" * pad)
        offset += pad
    f.write(data)
    dst.name = src.name
    dst.data_type = src.data_type
    dst.dims.extend(src.dims)
    if src.doc_string:
        dst.doc_string = src.doc_string
    dst.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
        entry = dst.external_data.add()
        entry.key = key
        entry.value = value
    return offset + len(data)


def _copy_fields_except(src, dst, skip: str) -> None:  # noqa: ANN001 - protobuf messages
    """Copy every set field of ``src`` into ``dst`` (same message type) except ``skip``."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if _is_repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


@functools.cache
def _is_repeated(field) -> bool:  # noqa: ANN001 - protobuf FieldDescriptor
    if hasattr(field, "is_repeated"):  # protobuf >= 5.28 removed .label on upb
        return bool(field.is_repeated)
    return field.label == field.LABEL_REPEATED


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a few syscalls (POSIX, main thread); no-op elsewhere."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
