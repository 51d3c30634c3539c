"""The corpus table: every graph of every ``fixtures/corpus/*/manifest.json``, judged by the one
criterion (``qdq_optimizer.testing.corpus.evaluate``): producer x architecture, lint problems
before/after, INT8 weighted ops, held-out samples (and how many the input's error rests on),
SQNR against the float model before/after, task metric, time.

Usage: ``python benchmarks/bench_corpus.py [--json OUT.json] [--markdown] [--rules NAME]
[--no-reference] [NAME_SUBSTRING ...]`` (``--rules``: every entry with that rule set instead of
its own; ``--no-reference``: optimize without the float model, whose weights otherwise replace
per-tensor int8 ones).
``QDQOPT_CORPUS_ROOT`` points it at another corpus folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from qdq_optimizer.testing.corpus import evaluate, load_manifests  # noqa: E402

COLUMNS = (
    "graph", "producer", "problems in->out", "INT8 ops in->out", "held-out (effective)",
    "SQNR in->out dB", "task in->out", "rules CPU s", "result",
)  # fmt: skip


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def row(r) -> list[str]:
    task = (
        "-"
        if r.task_before is None
        else f"{_num(r.task_before, '{:.3f}')}->{_num(r.task_after, '{:.3f}')}"
    )
    why = "; ".join(r.reasons)
    result = "pass" if r.passed else "FAIL: " + (why if len(why) <= 90 else why[:89] + "…")
    return [
        r.name,
        r.producer,
        f"{'refused' if r.problems_before is None else r.problems_before}->{_num(r.problems_after, '{}')}",
        f"{r.int8_ops_before}->{_num(r.int8_ops_after, '{}')}",
        f"{r.held_out} ({_num(r.effective_samples, '{:.0f}')})",  # Kish count of the input's error
        f"{_num(r.sqnr_before)}->{_num(r.sqnr_after)}",
        task,
        _num(r.cpu_seconds - r.calibration_cpu_seconds),  # what the limit judges
        result,
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", help="keep entries whose name contains one of these")
    ap.add_argument("--json", type=Path, help="write every result record here")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (for the README)")
    ap.add_argument("--rules", help="run every entry with this rule set instead of its own")
    ap.add_argument(
        "--no-reference",
        action="store_true",
        help="optimize without the float model (no --reference: per-tensor int8 weights stay)",
    )
    args = ap.parse_args()
    entries = [e for e in load_manifests() if not args.only or any(s in e.name for s in args.only)]
    if args.rules:
        entries = [dataclasses.replace(e, rules=args.rules) for e in entries]
    results = []
    for e in entries:
        r = evaluate(e, with_reference=not args.no_reference)
        results.append(r)
        if not args.markdown:
            print(" | ".join(row(r)), flush=True)
    if args.markdown:
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        for r in results:
            print("| " + " | ".join(c.replace("|", "/") for c in row(r)) + " |")
    passed = sum(r.passed for r in results)
    print(f"\n{passed} of {len(results)} pass")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1) + "\n")


if __name__ == "__main__":
    main()
