"""Side-by-side numbers for several engines (e.g. implicit PTQ vs Q/DQ, or Q/DQ placements)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import EngineReport
from .summary import Summary

_SUFFIXES = re.compile(r"(\.(graph|layers?|layerinfo|json|engine|plan|onnx|trt))+$", re.IGNORECASE)


def short_labels(sources: list[str]) -> list[str]:
    """Readable column labels: file names without report suffixes, with the folder if ambiguous."""
    names = [_SUFFIXES.sub("", Path(s).name) or Path(s).name for s in sources]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(s).parent.name}/{n}" for s, n in zip(sources, names, strict=True)]


@dataclass
class Comparison:
    labels: list[str]
    rows: list[tuple[str, list[Any]]]  # metric -> value per engine
    verdict: str
    best: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "engines": self.labels,
            "metrics": {name: values for name, values in self.rows},
            "fewest_reformats": self.best,
            "verdict": self.verdict,
        }


def compare(items: list[tuple[EngineReport, Summary]]) -> Comparison:
    """Layer counts, reformats, precision mix and time of each engine, plus which one wins."""
    labels = short_labels([r.source for r, _ in items])
    precisions = sorted({p for _, s in items for p in s.by_precision})
    rows: list[tuple[str, list[Any]]] = [
        ("layers", [s.layers for _, s in items]),
        ("compute layers", [s.compute_layers for _, s in items]),
        ("INT8 compute layers", [s.int8_compute_layers for _, s in items]),
        ("non-INT8 compute layers", [len(s.non_int8_compute) for _, s in items]),
        ("Q/DQ reformats", [len(s.qdq_reformats) for _, s in items]),
        ("  interior (unfused) Q/DQ", [len(s.qdq_reformats_interior) for _, s in items]),
        ("layout reformats", [len(s.layout_reformats) for _, s in items]),
        (
            "all reformats",
            [len(s.qdq_reformats) + len(s.layout_reformats) for _, s in items],
        ),
    ]
    rows += [(f"layers {p}", [s.by_precision.get(p, 0) for _, s in items]) for p in precisions]
    if any(s.time_ms for _, s in items):
        rows.append(("time ms", [_r(s.time_ms.get("total")) for _, s in items]))
        rows.append(
            (
                "reformat time ms",
                [
                    _r(s.time_ms["qdq_reformats"] + s.time_ms["layout_reformats"])
                    if s.time_ms
                    else None
                    for _, s in items
                ],
            )
        )
    totals = [len(s.qdq_reformats) + len(s.layout_reformats) for _, s in items]
    best_i = min(range(len(items)), key=lambda i: (totals[i], len(items[i][1].non_int8_compute)))
    ties = [i for i, t in enumerate(totals) if t == totals[best_i]]
    if len(items) < 2:
        verdict, best = "", None
    elif len(ties) > 1:
        verdict = f"{' and '.join(labels[i] for i in ties)} tie at {totals[best_i]} reformat(s)"
        best = labels[best_i]
    else:
        others = ", ".join(f"{labels[i]} {totals[i]}" for i in range(len(items)) if i != best_i)
        verdict = (
            f"{labels[best_i]} leaves the fewest reformats: {totals[best_i]} "
            f"({len(items[best_i][1].qdq_reformats)} Q/DQ + "
            f"{len(items[best_i][1].layout_reformats)} layout) vs {others}"
        )
        best = labels[best_i]
    return Comparison(labels=labels, rows=rows, verdict=verdict, best=best)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
