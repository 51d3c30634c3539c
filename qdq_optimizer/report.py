"""Plain data the engine, lint and the CLI share: problems, per-rule changes, the run report.

Kept free of graph types so a report can be built, serialized to JSON and compared in tests
without importing onnx-graphsurgeon.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Problem:
    """One placement problem: which rule or check found it, on which nodes, and why.

    ``severity`` is ``"error"`` (lint fails, optimize's remaining problems) or ``"warning"``: a
    documented TensorRT restriction we cannot confirm for the current TensorRT (e.g. the INT8
    fused-attention limits), reported but never counted as a problem."""

    rule_id: str
    node_names: list[str]
    message: str
    severity: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        nodes = ", ".join(self.node_names) if self.node_names else "-"
        return f"[{self.rule_id}] {nodes}: {self.message}"


@dataclass
class Change:
    """One edit an action made (or, in dry-run, would make): a verb, the nodes, a detail."""

    kind: str  # e.g. "remove", "rewire", "insert", "rescale", "merge"
    nodes: list[str]
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RuleResult:
    """Everything one rule did over all fixpoint iterations."""

    rule_id: str
    action: str
    why: str = ""
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unfixable: list[Problem] = field(default_factory=list)  # found, but the rule cannot fix it

    @property
    def count(self) -> int:
        return len(self.changes)

    def node_names(self) -> list[str]:
        """Nodes touched, in first-touched order, without repeats."""
        seen: dict[str, None] = {}
        for c in self.changes:
            for n in c.nodes:
                seen.setdefault(n, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "action": self.action,
            "why": self.why,
            "count": self.count,
            "changes": [c.to_dict() for c in self.changes],
            "notes": list(self.notes),
            "unfixable": [p.to_dict() for p in self.unfixable],
        }


@dataclass
class OptimizeReport:
    """What a run of a rule set did; ``to_json`` is what ``--report`` writes."""

    rules: str
    rule_chain: list[str] = field(default_factory=list)
    dry_run: bool = False
    iterations: int = 0
    converged: bool = True
    max_iterations: int = 0
    results: list[RuleResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)  # nodes/qdq before and after
    timings_ms: dict[str, float] = field(default_factory=dict)
    verify: list[dict[str, Any]] | None = None
    guard: dict[str, Any] | None = None  # the accuracy guard's measurements (guard.GuardReport)
    # optimize: what lint still finds in the result (None in dry-run, where nothing was written)
    remaining_problems: list[Problem] | None = None
    # lint's warnings (severity "warning"): of the input for lint, of the result for optimize
    lint_warnings: list[Problem] = field(default_factory=list)
    # the accuracy guard's model outputs on its samples, by "input", "output" and (a given float
    # model) "reference": arrays, never written to JSON; --verify on the same samples reuses them
    sample_outputs: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def total_changes(self) -> int:
        return sum(r.count for r in self.results)

    def result(self, rule_id: str) -> RuleResult | None:
        return next((r for r in self.results if r.rule_id == rule_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": self.rules,
            "rule_chain": list(self.rule_chain),
            "dry_run": self.dry_run,
            "iterations": self.iterations,
            "converged": self.converged,
            "max_iterations": self.max_iterations,
            "total_changes": self.total_changes,
            "stats": dict(self.stats),
            "results": [r.to_dict() for r in self.results],
            "problems": [p.to_dict() for p in self.problems],
            "warnings": list(self.warnings),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "verify": self.verify,
            "guard": self.guard,
            "remaining_problems": None
            if self.remaining_problems is None
            else [p.to_dict() for p in self.remaining_problems],
            "lint_warnings": [p.to_dict() for p in self.lint_warnings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    """numpy scalars and inf (SQNR of identical outputs) become plain JSON values."""
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    return str(obj)
