"""Render an inspected engine as a rich table, JSON (stable schema), Markdown, Graphviz dot or SVG."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import InputError, MissingDependencyError
from .compare import Comparison
from .gate import Violation
from .model import EngineReport, Layer
from .onnx_map import OnnxMapping
from .summary import Summary

SCHEMA_VERSION = 1
ELLIPSIS = "…"
FORMATS = ("table", "json", "markdown", "dot", "svg")
COLORS = {  # precision -> (rich style, graphviz fill)
    "INT8": ("green", "#b7e1a1"),
    "FP16": ("yellow", "#fde49c"),
    "BF16": ("yellow", "#fbd38d"),
    "FP32": ("red", "#f4a6a6"),
    "FP8": ("cyan", "#a6dcef"),
    "INT32": ("blue", "#c7d2fe"),
}
_NO_COLOR = ("white", "#e5e7eb")


def to_json_dict(
    report: EngineReport,
    summary: Summary,
    onnx: OnnxMapping | None = None,
    violations: list[Violation] | None = None,
) -> dict[str, Any]:
    """The documented ``--format json`` object (docs/inspect.md); new keys may be added."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "source": report.source,
        "trt_version_guess": report.trt_version_guess,
        "network_inputs": report.network_inputs,
        "network_outputs": report.network_outputs,
        "folded_noops": report.folded_noops,
        "profile": report.profile_source,
        "warnings": list(report.warnings),
        "layers": [layer.to_json() for layer in report.layers],
        "summary": summary.to_json(),
    }
    if onnx is not None:
        out["onnx"] = onnx.to_json()
    if violations is not None:
        out["expect"] = {
            "passed": not violations,
            "violations": [
                {"layer": v.layer, "kind": v.kind, "reason": v.reason} for v in violations
            ],
        }
    return out


def render_json(report, summary, onnx=None, violations=None) -> str:
    return json.dumps(to_json_dict(report, summary, onnx, violations), indent=2) + "\n"


def _prec(layer: Layer) -> str:
    a, b = layer.precision or "?", layer.output_precision or "?"
    return a if a == b else f"{a}->{b}"


def _reformat(layer: Layer) -> str:
    return (layer.reformat_origin or "").lower() if layer.is_reformat else ""


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def render_table(
    console: Console,
    report: EngineReport,
    summary: Summary,
    onnx: OnnxMapping | None = None,
    violations: list[Violation] | None = None,
    show_layers: bool = True,
) -> None:
    """Print the per-layer table and the summary with rich."""
    timed = report.total_time_ms is not None
    if show_layers:
        t = Table(title=f"{report.source}  (TensorRT {report.trt_version_guess})", show_lines=False)
        wide = console.width >= 120  # narrow terminals drop kernel and weights, never crop
        t.add_column("#", justify="right")
        t.add_column("layer", overflow="fold", min_width=16)
        cols = (
            ("type", "kernel", "precision", "reformat", "weights")
            if wide
            else (
                "type",
                "precision",
                "reformat",
            )
        )
        for col in cols:
            t.add_column(col, overflow="fold")
        if timed:
            t.add_column("ms (share)", justify="right", overflow="fold")
        for la in report.layers:
            style = COLORS.get(la.precision or "", _NO_COLOR)[0]
            if la.output_precision and la.output_precision != la.precision:
                style = "bold " + style
            cells = {
                "type": la.type,
                "kernel": la.kernel,
                "precision": Text(_prec(la), style=style),
                "reformat": Text(
                    _reformat(la), style="bold magenta" if la.reformat_origin == "QDQ" else ""
                ),
                "weights": la.weights_dtype or "",
            }
            row = [str(la.index), cut(la.name, 120), *(cells[c] for c in cols)]
            if timed:
                row.append(
                    f"{_ms(la.time_ms)} ({_pct(la.time_share)})" if la.time_ms is not None else ""
                )
            t.add_row(*row)
        console.print(t)
    s = Table(title="summary", show_header=False)
    s.add_column("what")
    s.add_column("value", overflow="fold")
    s.add_row("layers", f"{summary.layers} ({report.folded_noops} NoOp folded)")
    s.add_row("by precision", ", ".join(f"{k} {v}" for k, v in summary.by_precision.items()))
    s.add_row("by type", ", ".join(f"{k} {v}" for k, v in summary.by_type.items()))
    s.add_row(
        "compute layers",
        f"{summary.compute_layers} ({summary.int8_compute_layers} INT8 in and out)",
    )
    s.add_row("non-INT8 compute", _names([(f.layer, f.reason) for f in summary.non_int8_compute]))
    s.add_row(
        "Q/DQ reformats",
        f"{len(summary.qdq_reformats)} ({len(summary.qdq_reformats_interior)} interior)"
        + (
            ": " + _names([(f.layer, f.reason) for f in summary.qdq_reformats_interior])
            if summary.qdq_reformats_interior
            else ""
        ),
    )
    s.add_row("layout reformats", str(len(summary.layout_reformats)))
    s.add_row(
        "precision changes",
        ", ".join(f"{k} x{v}" for k, v in summary.precision_conversions.items()) or "none",
    )
    if summary.time_ms:
        tot = summary.time_ms["total"] or 1.0
        s.add_row(
            "time",
            f"{summary.time_ms['total']:.4f} ms; Q/DQ reformats {_pct(summary.time_ms['qdq_reformats'] / tot)}, "
            f"layout reformats {_pct(summary.time_ms['layout_reformats'] / tot)}, "
            f"non-INT8 compute {_pct(summary.time_ms['non_int8_compute'] / tot)}",
        )
    for w in report.warnings:
        s.add_row("warning", Text(w, style="yellow"))
    console.print(s)
    if onnx is not None:
        _onnx_table(console, onnx)
    if violations is not None:
        if violations:
            console.print(
                Text(f"--expect: FAILED, {len(violations)} violation(s)", style="bold red")
            )
            for v in violations:
                console.print(f"  {v}", markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(Text("--expect: passed", style="bold green"))


def cut(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters; a cut one ends in an ellipsis, so a cut name
    never reads as a real one (``... + Relu`` cut at an operator)."""
    return name if len(name) <= width else name[: width - 1] + ELLIPSIS


def _names(items: list[tuple[str, str]], limit: int = 12) -> str:
    if not items:
        return "none"
    shown = "; ".join(f"{cut(n, 70)} ({r})" for n, r in items[:limit])
    more = f"; ... {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)}: {shown}{more}"


def _onnx_table(console: Console, m: OnnxMapping) -> None:
    t = Table(
        title=f"ONNX {m.model}: quantized Conv/Gemm/MatMul not in INT8 ({len(m.not_int8)} of {m.quantized_weighted})"
    )
    for col in ("ONNX node", "op", "engine layer", "why"):
        t.add_column(col, overflow="fold")
    for e in m.not_int8:
        t.add_row(e["node"], e["op"], e["layer"] or "-", e["reason"])
    console.print(t)
    t = Table(title=f"ONNX Q/DQ nodes that became standalone reformats ({len(m.standalone_qdq)})")
    for col in ("ONNX node", "engine layer", "conversion", "where", "after", "before"):
        t.add_column(col, overflow="fold", min_width=12)
    for e in m.standalone_qdq:
        t.add_row(
            e["node"],
            e["layer"],
            e["conversion"],
            "interior" if e["interior"] else "network edge",
            ", ".join(e["after"]),
            ", ".join(e["before"]),
        )
    console.print(t)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(report, summary, onnx=None, violations=None, show_layers: bool = True) -> str:
    lines = [
        f"# Engine report: `{report.source}`",
        "",
        f"TensorRT {report.trt_version_guess}, "
        f"{summary.layers} layers ({report.folded_noops} NoOp folded)",
        "",
    ]
    lines += ["| metric | value |", "|---|---|"]
    lines.append(
        "| by precision | " + ", ".join(f"{k} {v}" for k, v in summary.by_precision.items()) + " |"
    )
    lines.append(
        f"| compute layers | {summary.compute_layers} ({summary.int8_compute_layers} INT8 in and out) |"
    )
    lines.append(f"| non-INT8 compute | {len(summary.non_int8_compute)} |")
    lines.append(
        f"| Q/DQ reformats | {len(summary.qdq_reformats)} ({len(summary.qdq_reformats_interior)} interior) |"
    )
    lines.append(f"| layout reformats | {len(summary.layout_reformats)} |")
    conv = ", ".join(f"{k} x{v}" for k, v in summary.precision_conversions.items()) or "none"
    lines.append(f"| precision changes | {conv} |")
    if summary.time_ms:
        lines.append(f"| time ms | {summary.time_ms['total']:.4f} |")
    lines.append("")
    if summary.non_int8_compute:
        lines += ["## Compute layers not INT8", ""]
        lines += [f"- `{_md_escape(f.layer)}`: {f.reason}" for f in summary.non_int8_compute]
        lines.append("")
    if summary.qdq_reformats_interior:
        lines += ["## Interior Q/DQ reformats", ""]
        lines += [f"- `{_md_escape(f.layer)}`: {f.reason}" for f in summary.qdq_reformats_interior]
        lines.append("")
    if onnx is not None:
        lines += [
            "## ONNX nodes",
            "",
            f"Quantized weighted nodes not in INT8: {len(onnx.not_int8)} of {onnx.quantized_weighted}",
            "",
        ]
        lines += [
            f"- `{e['node']}` ({e['op']}) -> `{e['layer']}`: {e['reason']}" for e in onnx.not_int8
        ]
        lines += [
            "",
            f"Q/DQ nodes that became standalone reformats: {len(onnx.standalone_qdq)}",
            "",
        ]
        lines += [
            f"- `{e['node']}` -> `{e['layer']}` {e['conversion']} ({'interior' if e['interior'] else 'network edge'}), after {', '.join(e['after'])}, before {', '.join(e['before'])}"
            for e in onnx.standalone_qdq
        ]
        lines.append("")
    if violations is not None:
        lines += [
            "## --expect",
            "",
            "passed" if not violations else f"FAILED: {len(violations)} violation(s)",
            "",
        ]
        lines += [f"- {_md_escape(str(v))}" for v in violations]
        lines.append("")
    if show_layers:
        lines += [
            "## Layers",
            "",
            "| # | layer | type | kernel | precision | reformat | ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for la in report.layers:
            lines.append(
                f"| {la.index} | {_md_escape(la.name)} | {la.type} | {la.kernel} | {_prec(la)} | {_reformat(la)} | {_ms(la.time_ms)} |"
            )
        lines.append("")
    for w in report.warnings:
        lines.append(f"> warning: {w}")
    return "\n".join(lines).rstrip() + "\n"


def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(report: EngineReport) -> str:
    """A Graphviz digraph: layers coloured by precision, Q/DQ reformats red, layout ones dashed."""
    out = [
        "digraph engine {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
    ]
    producer: dict[str, str] = {}
    for la in report.layers:
        for t in la.outputs:
            producer.setdefault(t.name, f"L{la.index}")
    for name in report.network_inputs:
        out.append(
            f'  {_dot_str("in:" + name)} [shape=ellipse, fillcolor="#ffffff", label={_dot_str(name)}];'
        )
    for name in report.network_outputs:
        out.append(
            f'  {_dot_str("out:" + name)} [shape=ellipse, fillcolor="#ffffff", label={_dot_str(name)}];'
        )
    for la in report.layers:
        fill = COLORS.get(la.precision or "", _NO_COLOR)[1]
        label = f"{cut(la.name, 60)}\n{la.type} ({la.kernel})\n{_prec(la)}"
        if la.time_ms is not None:
            label += f"\n{la.time_ms:.4f} ms"
        attrs = [f"label={_dot_str(label)}", f'fillcolor="{fill}"']
        if la.is_reformat and la.reformat_origin == "QDQ":
            attrs += ['color="#d00000"', "penwidth=3", "shape=octagon"]
        elif la.is_reformat:
            attrs += ['color="#e07000"', 'style="rounded,filled,dashed"', "penwidth=2"]
        out.append(f"  L{la.index} [{', '.join(attrs)}];")
    for la in report.layers:
        for t in la.inputs:
            src = producer.get(t.name) or _dot_str("in:" + t.name)
            if t.name not in producer and t.name not in report.network_inputs:
                continue
            out.append(f"  {src} -> L{la.index} [label={_dot_str(t.dtype or '?')}, fontsize=8];")
    for name in report.network_outputs:
        if name in producer:
            out.append(f"  {producer[name]} -> {_dot_str('out:' + name)};")
    out.append("}")
    return "\n".join(out) + "\n"


def render_svg(report: EngineReport, timeout_s: float = 120.0) -> str:
    """SVG through Graphviz's ``dot`` binary (Debian package graphviz)."""
    dot = shutil.which("dot")
    if dot is None:
        raise MissingDependencyError(
            "--format svg needs Graphviz's 'dot' binary (apt-get install graphviz); "
            "or use --format dot and render it elsewhere"
        )
    try:
        proc = subprocess.run(
            [dot, "-Tsvg"],
            input=render_dot(report).encode(),
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InputError(
            f"dot took over {timeout_s:.0f} s to lay out {report.source}; use --format dot"
        ) from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InputError(f"dot failed on {report.source}: {msg[0] if msg else proc.returncode}")
    return proc.stdout.decode()


def render_compare_table(console: Console, comp: Comparison) -> None:
    t = Table(title="engine comparison")
    t.add_column("metric")
    for label in comp.labels:
        t.add_column(label, justify="right", overflow="fold")
    for name, values in comp.rows:
        t.add_row(name, *["" if v is None else str(v) for v in values])
    console.print(t)
    if comp.verdict:
        console.print(comp.verdict, markup=False, highlight=False, soft_wrap=True)


def render_compare_markdown(comp: Comparison) -> str:
    lines = ["| metric | " + " | ".join(comp.labels) + " |", "|---" * (len(comp.labels) + 1) + "|"]
    for name, values in comp.rows:
        lines.append(
            f"| {name.strip()} | " + " | ".join("" if v is None else str(v) for v in values) + " |"
        )
    if comp.verdict:
        lines += ["", comp.verdict]
    return "\n".join(lines) + "\n"
