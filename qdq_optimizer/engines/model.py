"""The normalized engine-report model every reader produces and every renderer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TensorInfo:
    """One tensor at a layer's input or output, with its dtype parsed from the format string."""

    name: str
    dtype: str | None  # canonical (INT8, FP16, FP32, BF16, FP8, INT32, ...) or None if unknown
    format: str  # layout part of the format string, without the dtype word
    shape: list[int] | None
    raw_format: str = ""  # the format (and type) text exactly as TensorRT wrote it

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "format": self.format, "shape": self.shape}


@dataclass
class Layer:
    """One engine layer, normalized across TensorRT 8.2 ... 11 report formats."""

    index: int
    name: str
    type: str  # logical op: ParameterType, else LayerType (TREx's convention)
    kernel: str  # LayerType: the kernel family (CaskConvolution, Reformat, kgen, gemm, ...)
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    precision: str | None = None  # dtype of the first input (TREx's rule)
    output_precision: str | None = None  # dtype of the first output
    is_reformat: bool = False
    reformat_origin: str | None = None  # "QDQ" (a Q/DQ that did not fuse) or "LAYOUT"
    onnx_nodes: list[str] = field(default_factory=list)
    weights_dtype: str | None = None
    tactic: str | None = None
    time_ms: float | None = None
    time_share: float | None = None  # fraction of the profiled total, 0..1
    metadata: str = ""
    has_weights: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "kernel": self.kernel,
            "precision": self.precision,
            "output_precision": self.output_precision,
            "is_reformat": self.is_reformat,
            "reformat_origin": self.reformat_origin,
            "onnx_nodes": list(self.onnx_nodes),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "weights_dtype": self.weights_dtype,
            "tactic": self.tactic,
            "time_ms": self.time_ms,
        }


@dataclass
class EngineReport:
    """A whole engine: its layers in execution order plus what the loader noticed."""

    source: str
    trt_version_guess: str
    layers: list[Layer]
    network_inputs: list[str] = field(default_factory=list)
    network_outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    folded_noops: int = 0
    profile_source: str | None = None
    total_time_ms: float | None = None

    def layer(self, name: str) -> Layer:
        """The layer called ``name`` (KeyError if none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)
