"""Per-layer rules: which ONNX nodes a layer fused, whether it is a Q/DQ or layout reformat,
and whether it is a compute layer that an INT8 engine must run in INT8."""

from __future__ import annotations

import re

from .formats import FLOAT_OR_QUANT, INT8
from .model import Layer

QDQ = "QDQ"
LAYOUT = "LAYOUT"

# Kernel families that only move or alias data, or schedule work: never "compute".
NON_COMPUTE_KERNELS = frozenset(
    {"NoOp", "Constant", "shape_call", "signal", "wait", "Reformat", "MyelinReformat"}
)
_REFORMAT_KERNELS = frozenset({"Reformat", "MyelinReformat"})

# one tag per record; records are separated by \u001e (8.6) or \u001f (10.x kgen)
_ONNX_TAGS = re.compile(r"\[ONNX Layer:\s*([^\u001e\u001f]*?)\]\s*(?=[\u001e\u001f]|$)")
_UNNAMED = re.compile(r"\(Unnamed Layer\*\s*\d+\)")
_QDQ_NAME = re.compile(r"(?:De)?[Qq]uantizeLinear")
_TRT_INSERTED = ("Reformatting CopyNode", "copied_squeeze_after_", "unsqueeze_node_after_")
_FOREIGN = re.compile(r"^\{ForeignNode\[(.*)\]\}$")
_MYELIN_SUFFIX = re.compile(r"_myl\d+_\d+$")


def metadata_nodes(metadata: object) -> list[str]:
    """ONNX node names from a Metadata string ('[ONNX Layer: a]' joined by \\u001e or \\u001f)."""
    if not isinstance(metadata, str) or "[ONNX Layer:" not in metadata:
        return []
    return [n for n in _ONNX_TAGS.findall(metadata) if n]


def _strip_pwn(part: str) -> list[str]:
    """'PWN(PWN(a), b)' -> ['a', 'b']: TensorRT wraps fused point-wise ops in PWN(...)."""
    part = part.strip()
    if not part.startswith("PWN(") or not part.endswith(")"):
        return [part]
    inner = part[4:-1]
    out: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.extend(_strip_pwn(inner[start:i]))
            start = i + 1
    out.extend(_strip_pwn(inner[start:]))
    return out


def name_nodes(name: str) -> list[str]:
    """ONNX names a layer name lists: parts joined by ' + ', PWN(...) unwrapped, TRT's own
    (Unnamed Layer*, Reformatting CopyNode, copied_squeeze_after_...) dropped."""
    if any(name.startswith(p) for p in _TRT_INSERTED):
        return []
    m = _FOREIGN.match(name.strip())
    if m:  # Myelin: "{ForeignNode[first...last]}" names only the ends of the region
        name = " + ".join(p for p in m.group(1).split("...") if p)
    nodes: list[str] = []
    for part in name.split(" + "):
        for token in _strip_pwn(part):
            token = token.strip()
            if not token or _UNNAMED.search(token) or token.startswith(_TRT_INSERTED):
                continue
            token = _MYELIN_SUFFIX.sub("", token)
            if token not in nodes:
                nodes.append(token)
    return nodes


def is_qdq_name(name: str) -> bool:
    return bool(_QDQ_NAME.search(name))


def classify_reformat(raw: dict, layer: Layer) -> tuple[bool, str | None]:
    """(is_reformat, origin). Origin QDQ: a Q or DQ that did not fuse into a neighbour.

    8.4+ say so in ``Origin``; 8.2 shows a standalone Q/DQ as a Scale layer with Int8 on
    exactly one side; Myelin (10.x) as a kgen layer whose Metadata names only Q/DQ nodes.
    """
    in_int8 = layer.precision == INT8
    out_int8 = layer.output_precision == INT8
    if layer.kernel in _REFORMAT_KERNELS or layer.type == "Reformat":
        origin = raw.get("Origin")
        if isinstance(origin, str) and origin.upper() == "QDQ":
            return True, QDQ
        if isinstance(origin, str) and origin:
            return True, LAYOUT
        # no Origin (older reports): a Q/DQ only when the ONNX names say so; TensorRT's own
        # "Reformatting CopyNode" layers are layout/precision reformats
        if in_int8 != out_int8 and layer.onnx_nodes and all(map(is_qdq_name, layer.onnx_nodes)):
            return True, QDQ
        return True, LAYOUT
    if layer.kernel == "Scale" and in_int8 != out_int8 and not layer.has_weights:
        return True, QDQ
    if layer.onnx_nodes and not layer.has_weights and all(map(is_qdq_name, layer.onnx_nodes)):
        if layer.kernel not in NON_COMPUTE_KERNELS and layer.inputs and layer.outputs:
            return True, QDQ
    return False, None


def is_compute(layer: Layer) -> bool:
    """A layer that computes on activations, so INT8 matters for it.

    Reformats, NoOp/Constant, Myelin scheduling (shape_call, signal, wait) and layers that
    only see shape tensors (INT32/INT64/BOOL inputs) are not compute layers.
    """
    if layer.is_reformat or layer.kernel in NON_COMPUTE_KERNELS or layer.type == "NoOp":
        return False
    if not layer.inputs:
        return False
    return any(t.dtype is None or t.dtype in FLOAT_OR_QUANT for t in layer.inputs)
