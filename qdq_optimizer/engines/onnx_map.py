"""``--onnx``: map engine layers back to the ONNX nodes they came from.

Lists every quantized weighted ONNX node (Conv/ConvTranspose/Gemm/MatMul with a
DequantizeLinear on an input) that did not land in an INT8 layer, and every Q/DQ node that
became a standalone Reformat, with its ONNX neighbours, so the user knows which rule to apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..ops import WEIGHTED_OPS
from ..protos import QDQ_OPS
from .formats import INT8
from .model import EngineReport, Layer
from .summary import Summary, summarize


@dataclass
class OnnxMapping:
    model: str
    mapped_nodes: int
    quantized_weighted: int
    not_int8: list[dict[str, Any]] = field(default_factory=list)
    standalone_qdq: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "mapped_nodes": self.mapped_nodes,
            "quantized_weighted_nodes": self.quantized_weighted,
            "quantized_not_int8": self.not_int8,
            "standalone_qdq": self.standalone_qdq,
        }


def _load(path: str | os.PathLike):
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a hard dependency
        from ..errors import MissingDependencyError

        raise MissingDependencyError("--onnx needs the onnx package") from None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"ONNX model not found: {p}")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for a bad file
        raise InputError(f"{p}: not a readable ONNX model ({type(exc).__name__})") from None


def map_onnx(
    report: EngineReport, onnx_path: str | os.PathLike, summary: Summary | None = None
) -> OnnxMapping:
    """Map ``report``'s layers onto the nodes of the ONNX model it was built from."""
    model = _load(onnx_path)
    summary = summary or summarize(report)
    why_not_int8 = {f.layer: f.reason for f in summary.non_int8_compute}
    interior = {f.layer for f in summary.qdq_reformats_interior}
    nodes = list(model.graph.node)
    by_name = {n.name: n for n in nodes if n.name}
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    layer_of: dict[str, Layer] = {}
    for layer in report.layers:
        for token in layer.onnx_nodes:
            if token in by_name:
                layer_of.setdefault(token, layer)

    mapping = OnnxMapping(model=str(onnx_path), mapped_nodes=len(layer_of), quantized_weighted=0)
    for n in nodes:
        if n.op_type not in WEIGHTED_OPS:
            continue
        if not any(
            producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
            for i in n.input
        ):
            continue
        mapping.quantized_weighted += 1
        layer = layer_of.get(n.name)
        if layer is None:
            mapping.not_int8.append(
                {
                    "node": n.name,
                    "op": n.op_type,
                    "layer": None,
                    "reason": "not named by any engine layer (inside a Myelin region or renamed)",
                }
            )
        elif layer.precision != INT8 or layer.name in why_not_int8:
            mapping.not_int8.append(
                {
                    "node": n.name,
                    "op": n.op_type,
                    "layer": layer.name,
                    "precision": layer.precision,
                    "output_precision": layer.output_precision,
                    "reason": why_not_int8.get(layer.name, f"runs in {layer.precision}"),
                }
            )

    def neighbours_up(node) -> list[str]:
        prod = producer.get(node.input[0]) if node.input else None
        if prod is not None and prod.op_type in QDQ_OPS:
            prod = producer.get(prod.input[0]) if prod.input else None
        return [f"{prod.name} ({prod.op_type})"] if prod is not None else ["<network input>"]

    def neighbours_down(node) -> list[str]:
        out = []
        for c in consumers.get(node.output[0], []) if node.output else []:
            if c.op_type in QDQ_OPS:
                out += [f"{d.name} ({d.op_type})" for d in consumers.get(c.output[0], [])]
            else:
                out.append(f"{c.name} ({c.op_type})")
        return out or ["<network output>"]

    for layer in report.layers:
        if not (layer.is_reformat and layer.reformat_origin == "QDQ"):
            continue
        for token in layer.onnx_nodes:
            n = by_name.get(token)
            if n is None or n.op_type not in QDQ_OPS:
                continue
            mapping.standalone_qdq.append(
                {
                    "node": n.name,
                    "op": n.op_type,
                    "layer": layer.name,
                    "conversion": f"{layer.precision}->{layer.output_precision}",
                    "interior": layer.name in interior,
                    "after": neighbours_up(n),
                    "before": neighbours_down(n),
                }
            )
    return mapping
