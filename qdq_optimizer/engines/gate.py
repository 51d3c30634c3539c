"""``--expect int8``: the CI gate that fails when an engine is not INT8 end to end."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import CheckFailed, UsageError
from .classify import is_compute
from .model import EngineReport, Layer
from .summary import summarize

SUPPORTED = ("int8",)


@dataclass
class Violation:
    layer: str
    kind: str  # "compute" or "qdq_reformat"
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.layer!r}: {self.reason}"


def compile_allow(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise UsageError(f"--allow {p!r} is not a valid regular expression: {exc}") from None
    return out


def allowed(layer: Layer, allow: Sequence[re.Pattern[str]]) -> bool:
    """A layer is allowed when a pattern matches its name or one of its ONNX nodes."""
    return any(p.search(layer.name) or any(p.search(n) for n in layer.onnx_nodes) for p in allow)


def check(report: EngineReport, expect: str = "int8", allow: Sequence[str] = ()) -> list[Violation]:
    """Every compute layer not INT8 in and out and every interior Q/DQ reformat, minus ``allow``.

    Layers matched by ``allow`` are treated like network inputs/outputs, so the Q/DQ reformats
    that feed or drain a deliberately float layer are not counted against the engine.
    """
    if expect.lower() not in SUPPORTED:
        raise UsageError(
            f"--expect {expect!r} is not supported (choose from {', '.join(SUPPORTED)})"
        )
    pats = compile_allow(allow)

    def terminal(layer: Layer) -> bool:
        return is_compute(layer) and allowed(layer, pats)

    summary = summarize(report, terminal=terminal)
    by_name = {la.name: la for la in report.layers}
    out = [
        Violation(f.layer, "compute", f.reason)
        for f in summary.non_int8_compute
        if not allowed(by_name[f.layer], pats)
    ]
    out += [
        Violation(f.layer, "qdq_reformat", f.reason)
        for f in summary.qdq_reformats_interior
        if not allowed(by_name[f.layer], pats)
    ]
    return out


def enforce(report: EngineReport, expect: str = "int8", allow: Sequence[str] = ()) -> None:
    """Raise CheckFailed (exit 1) naming the first offenders when ``check`` finds any."""
    violations = check(report, expect, allow)
    if violations:
        n_c = sum(v.kind == "compute" for v in violations)
        n_q = len(violations) - n_c
        first = "; ".join(str(v) for v in violations[:3])
        more = f"; ... {len(violations) - 3} more" if len(violations) > 3 else ""
        raise CheckFailed(
            f"{report.source}: not {expect.upper()} end to end: {n_c} compute layer(s) not "
            f"{expect.upper()}, {n_q} interior Q/DQ reformat(s): {first}{more}"
        )
