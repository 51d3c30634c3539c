"""Summaries over an EngineReport: precision mix, non-INT8 compute, Q/DQ vs layout reformats.

An INT8 engine still needs one quantize at its float inputs and one dequantize at its float
outputs; those are "boundary" Q/DQ reformats. Every other Q/DQ reformat is an interior one: a
Q/DQ that failed to fuse and costs a kernel. A compute layer that is the network's last layer
may output float (the final dequantize fused into it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .classify import QDQ, is_compute
from .formats import FLOAT_OR_QUANT, INT8
from .model import EngineReport, Layer


@dataclass
class Finding:
    layer: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"layer": self.layer, "reason": self.reason}


@dataclass
class Summary:
    layers: int
    by_precision: dict[str, int]
    by_type: dict[str, int]
    compute_layers: int
    int8_compute_layers: int
    non_int8_compute: list[Finding]
    qdq_reformats: list[str]
    qdq_reformats_interior: list[Finding]
    layout_reformats: list[str]
    precision_conversions: dict[str, int]
    time_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "by_precision": dict(self.by_precision),
            "by_type": dict(self.by_type),
            "compute_layers": self.compute_layers,
            "int8_compute_layers": self.int8_compute_layers,
            "non_int8_compute": [f.layer for f in self.non_int8_compute],
            "non_int8_compute_reasons": [f.to_json() for f in self.non_int8_compute],
            "qdq_reformats": list(self.qdq_reformats),
            "qdq_reformats_interior": [f.to_json() for f in self.qdq_reformats_interior],
            "layout_reformats": list(self.layout_reformats),
            "precision_conversions": dict(self.precision_conversions),
            "time_ms": dict(self.time_ms),
        }


class Boundaries:
    """Which tensors come only from network inputs / reach only network outputs through
    non-compute layers (reformats, NoOps, constants) or through ``terminal`` layers."""

    def __init__(self, report: EngineReport, terminal: Callable[[Layer], bool] = lambda _: False):
        self.inputs = set(report.network_inputs)
        self.outputs = set(report.network_outputs)
        self.terminal = terminal
        self.producer: dict[str, Layer] = {}
        self.consumers: dict[str, list[Layer]] = {}
        for layer in report.layers:
            for t in layer.outputs:
                self.producer.setdefault(t.name, layer)
            for t in layer.inputs:
                self.consumers.setdefault(t.name, []).append(layer)
        self._from: dict[str, bool] = {}
        self._to: dict[str, bool] = {}

    def _passes(self, layer: Layer) -> bool:
        return not is_compute(layer)

    def from_inputs(self, tensor: str) -> bool:
        """True when ``tensor`` is computed from network inputs by non-compute layers only."""
        return _solve(tensor, self._from, self._from_base, self._from_deps)

    def to_outputs(self, tensor: str) -> bool:
        """True when ``tensor`` reaches network outputs through non-compute layers only."""
        return _solve(tensor, self._to, self._to_base, self._to_deps)

    def _from_base(self, tensor: str) -> bool | None:
        prod = self.producer.get(tensor)
        if tensor in self.inputs or prod is None or self.terminal(prod):
            return True
        return None if self._passes(prod) else False

    def _from_deps(self, tensor: str) -> list[str]:
        return [t.name for t in self.producer[tensor].inputs]

    def _users(self, tensor: str) -> list[Layer]:
        return [u for u in self.consumers.get(tensor, []) if not self.terminal(u)]

    def _to_base(self, tensor: str) -> bool | None:
        if tensor not in self.consumers:
            return tensor in self.outputs
        users = self._users(tensor)
        if not users:
            return True  # only deliberately-float (terminal) layers read it
        return None if all(self._passes(u) for u in users) else False

    def _to_deps(self, tensor: str) -> list[str]:
        return [t.name for u in self._users(tensor) for t in u.outputs]


def _solve(
    start: str,
    memo: dict[str, bool],
    base: Callable[[str], bool | None],
    deps: Callable[[str], list[str]],
) -> bool:
    """all(deps) over a DAG, iteratively (reports can chain thousands of reformats) and memoized;
    a cycle, which a valid engine never has, counts as False."""
    if start in memo:
        return memo[start]
    stack, on_path = [start], set()
    while stack:
        t = stack[-1]
        if t in memo:
            stack.pop()
            continue
        if t not in on_path:
            b = base(t)
            if b is not None:
                memo[t] = b
                stack.pop()
                continue
            on_path.add(t)
            stack.extend(d for d in deps(t) if d not in memo and d not in on_path)
            continue
        memo[t] = all(memo.get(d, False) for d in deps(t))
        on_path.discard(t)
        stack.pop()
    return memo[start]


def _activation_inputs(layer: Layer):
    return [t for t in layer.inputs if t.dtype is None or t.dtype in FLOAT_OR_QUANT]


def compute_finding(layer: Layer, bounds: Boundaries) -> str | None:
    """Why a compute layer is not INT8 in and out, or None when it is."""
    reasons = []
    ins = _activation_inputs(layer)
    if any(t.dtype is None for t in ins + layer.outputs):
        reasons.append("dtype unknown")
    bad_in = sorted({t.dtype for t in ins if t.dtype not in (INT8, None)})
    if bad_in:
        reasons.append("input " + "/".join(bad_in))
    bad_out = sorted({t.dtype for t in layer.outputs if t.dtype not in (INT8, None)})
    if bad_out and not all(bounds.to_outputs(t.name) for t in layer.outputs):
        reasons.append("output " + "/".join(bad_out))
    return ", ".join(reasons) or None


def qdq_finding(layer: Layer, bounds: Boundaries) -> str | None:
    """Why a Q/DQ reformat is an interior one, or None for the network's first Q / last DQ."""
    at_input = all(bounds.from_inputs(t.name) for t in layer.inputs)
    at_output = all(bounds.to_outputs(t.name) for t in layer.outputs)
    if layer.output_precision == INT8 or (
        layer.output_precision is None and _named_quantize(layer)
    ):
        return None if at_input else f"quantize {layer.precision}->INT8 inside the network"
    if layer.output_precision is not None or _named_dequantize(layer):
        if at_output:
            return None
        return f"dequantize {layer.precision}->{layer.output_precision} inside the network"
    return None if (at_input or at_output) else "Q/DQ of unknown dtype inside the network"


def _named_quantize(layer: Layer) -> bool:
    names = layer.onnx_nodes or [layer.name]
    return all("QuantizeLinear" in n and "DequantizeLinear" not in n for n in names)


def _named_dequantize(layer: Layer) -> bool:
    names = layer.onnx_nodes or [layer.name]
    return all("DequantizeLinear" in n for n in names)


def summarize(report: EngineReport, terminal: Callable[[Layer], bool] | None = None) -> Summary:
    """Summarize a report; ``terminal`` marks layers (e.g. --allow'ed) treated like network I/O."""
    bounds = Boundaries(report, terminal or (lambda _: False))
    by_precision = Counter(layer.precision or "none" for layer in report.layers)
    by_type = Counter(layer.type for layer in report.layers)
    compute = [la for la in report.layers if is_compute(la)]
    non_int8 = []
    for layer in compute:
        reason = compute_finding(layer, bounds)
        if reason:
            non_int8.append(Finding(layer.name, reason))
    qdq = [la for la in report.layers if la.is_reformat and la.reformat_origin == QDQ]
    interior = []
    for layer in qdq:
        reason = qdq_finding(layer, bounds)
        if reason:
            interior.append(Finding(layer.name, reason))
    layout = [la.name for la in report.layers if la.is_reformat and la.reformat_origin != QDQ]
    conversions = Counter(
        f"{la.precision}->{la.output_precision}"
        for la in report.layers
        if la.precision and la.output_precision and la.precision != la.output_precision
    )
    times: dict[str, float] = {}
    if report.total_time_ms:
        names_non_int8 = {f.layer for f in non_int8}

        def total(pred: Callable[[Layer], bool]) -> float:
            return sum(la.time_ms or 0.0 for la in report.layers if pred(la))

        times = {
            "total": report.total_time_ms,
            "qdq_reformats": total(lambda la: la.is_reformat and la.reformat_origin == QDQ),
            "layout_reformats": total(lambda la: la.is_reformat and la.reformat_origin != QDQ),
            "non_int8_compute": total(lambda la: la.name in names_non_int8),
            "int8_compute": total(lambda la: is_compute(la) and la.name not in names_non_int8),
        }
    return Summary(
        layers=len(report.layers),
        by_precision=dict(sorted(by_precision.items())),
        by_type=dict(by_type.most_common()),
        compute_layers=len(compute),
        int8_compute_layers=len(compute) - len(non_int8),
        non_int8_compute=non_int8,
        qdq_reformats=[la.name for la in qdq],
        qdq_reformats_interior=interior,
        layout_reformats=layout,
        precision_conversions=dict(conversions.most_common()),
        time_ms=times,
    )
