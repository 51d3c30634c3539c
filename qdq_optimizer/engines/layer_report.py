"""Load any TensorRT engine layer report (8.2 ... 11, whole or per-layer dumps) into an EngineReport.

Readers are strict about structure and lenient about spelling: a wrong top-level type, a
truncated file or a string where a number belongs is a one-line InputError naming the file
and the place, while every format string TensorRT has used parses to a dtype.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..gcutil import paused_gc
from .classify import classify_reformat, metadata_nodes, name_nodes
from .formats import is_unavailable, parse_dtype, parse_layout
from .model import EngineReport, Layer, TensorInfo

#: Reports larger than this are refused (json would need ~10x the file size in memory).
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
DETAILED_HINT = (
    "rebuild with detailed profiling verbosity: trtexec --profilingVerbosity=detailed "
    "--exportLayerInfo=model.graph.json (Python: config.profiling_verbosity = "
    "trt.ProfilingVerbosity.DETAILED)"
)
DYNAMIC_HINT = (
    "formats are 'N/A due to dynamic shapes': export the layer info with input shapes bound "
    "(trtexec --shapes=input:1x3x224x224 --exportLayerInfo=..., or in Python set "
    "inspector.execution_context to a context whose input shapes are set)"
)
_LAYER_SEP = re.compile(r"^[ \t]*-{2,}[ \t]*Layer[ \t]+\d+[ \t]*-{2,}[ \t]*$", re.MULTILINE)
_SKIP_KERNELS = frozenset({"signal", "wait"})
_PROFILE_SUFFIX = re.compile(r"\[profile +[1-9][0-9]*\]")


def read_text_capped(path: str | os.PathLike, what: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Read a text file, refusing ones over ``max_bytes`` before reading a byte of them."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{what} not found: {p}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {p}: {exc.strerror}") from None
    if p.is_dir():
        raise InputError(f"{what} is a folder, not a file: {p}")
    if size > max_bytes:
        raise InputError(
            f"{p}: {size / 2**20:.0f} MiB is over the {max_bytes / 2**20:.0f} MiB limit for a "
            f"{what} (raise max_bytes / QDQOPT_INSPECT_MAX_MB if it really is one)"
        )
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {p}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{p}: not a UTF-8 JSON {what} (byte {exc.start}); a .plan engine needs the "
            ".plan/.engine suffix"
        ) from None


def max_bytes_from_env() -> int:
    """The size cap, overridable with QDQOPT_INSPECT_MAX_MB for truly huge engines."""
    raw = os.environ.get("QDQOPT_INSPECT_MAX_MB")
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        return int(float(raw) * 2**20)
    except ValueError:
        raise InputError(f"QDQOPT_INSPECT_MAX_MB must be a number, got {raw!r}") from None


def parse_json_documents(text: str, source: str) -> list[Any]:
    """One JSON document, or several one after another (per-layer dumps, '--- Layer N ---')."""
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{source}: empty file, expected an engine layer report (JSON)")
    try:
        return [json.loads(stripped)]
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply to be an engine layer report") from None
    except json.JSONDecodeError as first_error:
        docs, later_error = _parse_many(stripped)
        if docs is None:
            # several documents that parse up to a point: report where the bad one breaks
            e = later_error or first_error
            hint = " (file truncated?)" if e.pos >= len(stripped) - 1 else ""
            raise InputError(
                f"{source}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}{hint}"
            ) from None
        return docs


def _parse_many(text: str) -> tuple[list[Any] | None, json.JSONDecodeError | None]:
    """Documents one after another; separator lines are blanked so line numbers stay right."""
    decoder = json.JSONDecoder()
    body = _LAYER_SEP.sub("", text)
    docs: list[Any] = []
    pos, n = 0, len(body)
    while True:
        while pos < n and body[pos].isspace():
            pos += 1
        if pos >= n:
            break
        try:
            doc, pos = decoder.raw_decode(body, pos)
        except RecursionError:
            raise InputError("JSON nested too deeply to be an engine layer report") from None
        except json.JSONDecodeError as exc:
            return None, (exc if docs else None)
        docs.append(doc)
    return (docs or None), None


def _type_name(obj: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(obj), "a number" if isinstance(obj, int | float) else type(obj).__name__
    )


def _raw_layers(docs: list[Any], source: str) -> tuple[list[dict], list[Any], bool]:
    """(layers, io/binding entries, has I/O Tensors) from the parsed documents."""
    layers: list[Any] = []
    io: list[Any] = []
    has_io_tensors = False
    for doc in docs:
        if isinstance(doc, dict) and "Layers" in doc:
            if not isinstance(doc["Layers"], list):
                raise InputError(
                    f"{source}: 'Layers' must be a list, got {_type_name(doc['Layers'])}"
                )
            layers.extend(doc["Layers"])
            if "I/O Tensors" in doc:
                has_io_tensors = True
                io.extend(_as_list(doc["I/O Tensors"], source, "I/O Tensors"))
            elif "Bindings" in doc:
                io.extend(_as_list(doc["Bindings"], source, "Bindings"))
        elif isinstance(doc, dict) and "Name" in doc and ("LayerType" in doc or "Inputs" in doc):
            layers.append(doc)
        elif (
            isinstance(doc, list)
            and doc
            and all(isinstance(x, dict) and "Name" in x for x in doc)
            and any("LayerType" in x or "Inputs" in x for x in doc)
        ):
            layers.extend(doc)
        elif isinstance(doc, list) and doc and all(isinstance(x, str) for x in doc):
            layers.extend(doc)
        elif (
            isinstance(doc, list)
            and doc
            and all(isinstance(x, dict) and ("name" in x or "count" in x) for x in doc)
        ):
            raise InputError(
                f"{source}: this is a profile (trtexec --exportProfile), not a layer report: "
                "pass it with --profile next to the --exportLayerInfo JSON"
            )
        else:
            raise InputError(
                f"{source}: not an engine layer report: top level is {_type_name(doc)}, expected "
                "an object with 'Layers' (trtexec --exportLayerInfo or the engine inspector's JSON)"
            )
    if not layers:
        raise InputError(f"{source}: the report has no layers")
    if all(isinstance(x, str) for x in layers):
        raise InputError(
            f"{source}: the report lists layer names only, so no precision can be read; "
            + DETAILED_HINT
        )
    for i, x in enumerate(layers):
        if not isinstance(x, dict):
            raise InputError(f"{source}: layer {i} is {_type_name(x)}, expected an object")
        if not isinstance(x.get("Name"), str):
            raise InputError(f"{source}: layer {i} has no string 'Name'")
        for key in ("LayerType", "ParameterType", "Origin"):
            if key in x and not isinstance(x[key], str):
                raise InputError(
                    f"{source}: layer {i} {x['Name'][:60]!r}: '{key}' must be a string, "
                    f"got {_type_name(x[key])}"
                )
    return layers, io, has_io_tensors


def _as_list(value: Any, source: str, key: str) -> list:
    if not isinstance(value, list):
        raise InputError(f"{source}: '{key}' must be a list, got {_type_name(value)}")
    return value


@lru_cache(maxsize=1024)
def _norm_key(k: str) -> str:
    return re.sub(r"[^a-z]", "", k.lower())


def _tensor(raw: Any, where: str) -> TensorInfo:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a tensor object, got {_type_name(raw)}")
    name = raw.get("Name", "")
    if not isinstance(name, str):
        raise InputError(f"{where}: tensor 'Name' must be a string, got {_type_name(name)}")
    combined = dtype_text = fmt_text = None
    shape_raw: Any = None
    if "Format/Datatype" in raw:  # TRT 8.2-10: the common case, no key scan needed
        combined, shape_raw = raw["Format/Datatype"], raw.get("Dimensions")
    for k, v in () if combined is not None else raw.items():
        nk = _norm_key(k)
        if nk == "formatdatatype":
            combined = v
        elif nk in ("datatype", "dtype", "type", "precision"):
            dtype_text = v
        elif nk in ("format", "layout", "tensorformat"):
            fmt_text = v
        elif nk in ("dimensions", "shape", "dims"):
            shape_raw = v
    for label, v in (("format", combined), ("data type", dtype_text), ("format", fmt_text)):
        if v is not None and not isinstance(v, str):
            raise InputError(
                f"{where}: tensor {name!r} {label} must be a string, got {_type_name(v)}"
            )
    if combined is not None:
        dtype = parse_dtype(combined)
        layout = parse_layout(combined)
        raw_format = combined
    else:
        dtype = parse_dtype(dtype_text) or parse_dtype(fmt_text)
        layout = parse_layout(fmt_text) if fmt_text else ""
        raw_format = " / ".join(x for x in (fmt_text, dtype_text) if x)
    if dtype is None and is_unavailable(raw_format):
        layout = "N/A (dynamic shapes)"
    shape = None
    if shape_raw is not None:
        if not isinstance(shape_raw, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape_raw
        ):
            raise InputError(
                f"{where}: tensor {name!r} Dimensions must be a list of integers, got {shape_raw!r:.60}"
            )
        shape = list(shape_raw)
    return TensorInfo(name=name, dtype=dtype, format=layout, shape=shape, raw_format=raw_format)


def _weights(raw: dict, where: str) -> tuple[bool, str | None]:
    """(has weights, weights dtype) from Weights / ConvWeights {Type, Count}."""
    for key in ("Weights", "ConvWeights"):
        w = raw.get(key)
        if w is None:
            continue
        if not isinstance(w, dict):
            raise InputError(f"{where}: '{key}' must be an object, got {_type_name(w)}")
        count = w.get("Count", 0)
        if not isinstance(count, int | float) or isinstance(count, bool):
            raise InputError(f"{where}: '{key}.Count' must be a number, got {count!r:.40}")
        if count:
            return True, parse_dtype(w.get("Type"))
    return False, None


def _tactic(raw: dict) -> str | None:
    name = raw.get("TacticName")
    if isinstance(name, str) and name:
        return name
    value = raw.get("TacticValue")
    if isinstance(value, str | int) and value not in ("", "0x0000000000000000"):
        return str(value)
    return None


def _build_layer(index: int, raw: dict, source: str) -> Layer:
    name = raw.get("Name")
    if not isinstance(name, str):
        raise InputError(f"{source}: layer {index} has no string 'Name'")
    where = f"{source}: layer {index} {name[:80]!r}"
    kernel = raw.get("LayerType", "")
    ptype = raw.get("ParameterType")
    for key, v in (("LayerType", kernel), ("ParameterType", ptype)):
        if v is not None and not isinstance(v, str):
            raise InputError(f"{where}: '{key}' must be a string, got {_type_name(v)}")
    ins = _as_list(raw.get("Inputs", []), where, "Inputs")
    outs = _as_list(raw.get("Outputs", []), where, "Outputs")
    metadata = raw.get("Metadata", "")
    if not isinstance(metadata, str):
        metadata = ""  # 8.2 engines carry device properties here, not ONNX names
    has_w, w_dtype = _weights(raw, where)
    nodes = metadata_nodes(metadata) or name_nodes(name)
    return Layer(
        index=index,
        name=name,
        type=ptype or kernel or "Unknown",
        kernel=kernel or ptype or "Unknown",
        inputs=[_tensor(t, where) for t in ins],
        outputs=[_tensor(t, where) for t in outs],
        onnx_nodes=nodes,
        weights_dtype=w_dtype,
        tactic=_tactic(raw),
        metadata=metadata,
        has_weights=has_w,
    )


def _fold_noops(layers: list[Layer], outputs: set[str]) -> tuple[list[Layer], int]:
    """Drop NoOp layers and wire their input to their consumers, as TREx does.

    A NoOp whose output is a network output instead hands that output to its producer.
    """
    consumers: dict[str, list[tuple[Layer, int]]] = {}
    producers: dict[str, list[tuple[Layer, int]]] = {}
    for layer in layers:
        for port, t in enumerate(layer.inputs):
            consumers.setdefault(t.name, []).append((layer, port))
        for port, t in enumerate(layer.outputs):
            producers.setdefault(t.name, []).append((layer, port))
    folded = 0
    for layer in layers:
        if layer.type != "NoOp":
            continue
        folded += 1
        if not layer.inputs or not layer.outputs:
            continue
        out = layer.outputs[0]
        succ = consumers.get(out.name, [])
        if succ:
            for consumer, port in succ:
                consumer.inputs[port] = layer.inputs[0]
        elif out.name in outputs or not outputs:
            for producer, port in producers.get(layer.inputs[0].name, []):
                producer.outputs[port] = out
    return [la for la in layers if la.type != "NoOp"], folded


def _io_name(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("Name", ""))
    return entry if isinstance(entry, str) else ""


def _io_names(io: list[Any], has_io_tensors: bool, source: str) -> tuple[set[str], set[str]]:
    """(input names, output names) declared by Bindings / I/O Tensors; modes unknown -> both."""
    ins: set[str] = set()
    outs: set[str] = set()
    for entry in io:
        if isinstance(entry, str):
            ins.add(entry)
            outs.add(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("Name"), str):
            mode = str(entry.get("Mode", entry.get("IOMode", entry.get("Type", "")))).lower()
            if "in" in mode and "out" not in mode:
                ins.add(entry["Name"])
            elif "out" in mode:
                outs.add(entry["Name"])
            else:
                ins.add(entry["Name"])
                outs.add(entry["Name"])
        else:
            key = "I/O Tensors" if has_io_tensors else "Bindings"
            raise InputError(f"{source}: '{key}' entries must be names or objects with a 'Name'")
    return ins, outs


def guess_version(raws: list[dict], has_io_tensors: bool) -> str:
    """Best guess at the TensorRT release that wrote the report, from what fields it uses."""

    def tensors():
        for r in raws:
            for key in ("Inputs", "Outputs"):
                for t in r.get(key) or []:
                    if isinstance(t, dict):
                        yield t

    if has_io_tensors or any("Format/Datatype" not in t and len(t) > 1 for t in tensors()):
        return "11"
    kernels = {r.get("LayerType") for r in raws}
    if kernels & {"kgen", "gemm", "shape_call", "signal", "wait"} or any(
        "\u001f" in str(r.get("Metadata", "")) for r in raws
    ):
        return "10"
    if any(isinstance(r.get("Metadata"), str) for r in raws):
        return "8.6"
    if any("Location" in t for t in tensors()):
        return "8.4-8.5"
    return "8.2"


def load_report(
    source: str | os.PathLike | dict | list,
    *,
    fold_noops: bool = True,
    max_bytes: int | None = None,
    name: str | None = None,
) -> EngineReport:
    """Read an engine layer report (path to JSON or .plan, or already-parsed JSON).

    ``fold_noops`` removes NoOp layers like TREx does, so layer counts match TREx's.
    """
    with paused_gc():
        return _load_report(source, fold_noops=fold_noops, max_bytes=max_bytes, name=name)


def _load_report(
    source: str | os.PathLike | dict | list,
    *,
    fold_noops: bool,
    max_bytes: int | None,
    name: str | None,
) -> EngineReport:
    if isinstance(source, dict | list):
        docs = [source]
        label = name or "<report>"
    else:
        path = Path(source)
        label = name or str(path)
        if path.suffix.lower() in PLAN_SUFFIXES:
            from .tensorrt_api import read_plan_json

            text = read_plan_json(path)
        else:
            cap = max_bytes if max_bytes is not None else max_bytes_from_env()
            text = read_text_capped(path, "engine layer report", cap)
        docs = parse_json_documents(text, label)
    return report_from_documents(docs, label, fold_noops=fold_noops)


def report_from_documents(docs: list[Any], source: str, *, fold_noops: bool = True) -> EngineReport:
    """Normalize parsed JSON documents into an EngineReport."""
    raws, io, has_io_tensors = _raw_layers(docs, source)
    raws = [r for r in raws if r.get("LayerType") not in _SKIP_KERNELS]
    warnings: list[str] = []
    other_profiles = [r for r in raws if _PROFILE_SUFFIX.search(r["Name"])]
    if other_profiles and len(other_profiles) < len(raws):
        # like TREx: an engine with several optimization profiles repeats its layers with a
        # "[profile N]" suffix for N >= 1; report the first profile's layers only
        raws = [r for r in raws if not _PROFILE_SUFFIX.search(r["Name"])]
        io = [x for x in io if not _PROFILE_SUFFIX.search(_io_name(x))]
        warnings.append(
            f"the engine has several optimization profiles: showing profile 0, "
            f"{len(other_profiles)} layer(s) of the other profiles left out"
        )
    layers = []
    seen: dict[str, int] = {}
    raw_by_layer: dict[int, dict] = {}
    for i, raw in enumerate(raws):
        layer = _build_layer(i, raw, source)
        if layer.name in seen:  # TREx's disambiguation: a repeated name gets _2, _3, ...
            seen[layer.name] += 1
            layer.name = f"{layer.name}_{seen[layer.name]}"
        else:
            seen[layer.name] = 1
        raw_by_layer[id(layer)] = raw
        layers.append(layer)
    io_in, io_out = _io_names(io, has_io_tensors, source)
    produced = {t.name for la in layers for t in la.outputs}
    consumed = {t.name for la in layers for t in la.inputs}
    net_out = (io_out & produced) | (produced - consumed)
    folded = 0
    if fold_noops:
        layers, folded = _fold_noops(layers, net_out)
    for i, layer in enumerate(layers):
        layer.index = i
        layer.precision = _first_dtype(layer.inputs)
        if not layer.inputs:
            layer.precision = _first_dtype(layer.outputs)
        layer.output_precision = _first_dtype(layer.outputs)
        layer.is_reformat, layer.reformat_origin = classify_reformat(raw_by_layer[id(layer)], layer)
    produced = {t.name for la in layers for t in la.outputs}
    consumed = {t.name for la in layers for t in la.inputs}
    net_in = sorted((io_in & consumed) | (consumed - produced))
    net_out_list = sorted((io_out & produced) | (produced - consumed))
    unknown = [
        la.name
        for la in layers
        if any(t.dtype is None and is_unavailable(t.raw_format) for t in la.inputs + la.outputs)
    ]
    if unknown:
        warnings.append(f"{len(unknown)} layer(s) have no dtype: {DYNAMIC_HINT}")
    return EngineReport(
        source=source,
        trt_version_guess=guess_version(raws, has_io_tensors),
        layers=layers,
        network_inputs=net_in,
        network_outputs=net_out_list,
        warnings=warnings,
        folded_noops=folded,
    )


def _first_dtype(tensors: Iterable[TensorInfo]) -> str | None:
    for t in tensors:
        return t.dtype
    return None
