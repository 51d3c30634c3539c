"""What the current rules do to the transformer corpus (issue 11's baseline).

For every entry of ``fixtures/corpus/transformers/manifest.json`` (``make corpus-transformers``):
run ``qdq_optimizer.api.optimize`` with the entry's rule set and print

- ``exit``: 0, or the exit code and one-line error the CLI would give;
- ``gemm``: INT8 weighted GEMMs before -> after / all weighted GEMMs (a MatMul/Gemm whose weight is
  quantized in any export form, ``matmul_patterns.weighted_matmul``, and whose activation input
  arrives through DQ);
- ``bmm``: INT8 attention matmuls before -> after / all activation x activation MatMuls (both
  inputs through DQ, ``matmul_patterns.is_int8_matmul``);
- ``conv``: INT8 convolutions (weight and input through DQ) before -> after, for the conv parts;
- ``lint``: lint problems of the input -> of the output;
- ``SQNR``: dB against the float model on the held-out inputs, input -> output (all outputs
  together), and the delta;
- ``idem``: whether a second run changes nothing; ``ms``: optimize's time.

    python benchmarks/bench_transformers.py [--manifest PATH] [--json OUT.json]
        [--allow-asymmetric] [--rules NAME] [NAME_REGEX]

``--rules NAME`` runs every entry with that rule set (e.g. ``attention``) instead of its own.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from qdq_optimizer.api import lint, optimize
from qdq_optimizer.commute import is_int8_tensor
from qdq_optimizer.errors import EXIT_INTERNAL, QdqoptError
from qdq_optimizer.graph import QGraph
from qdq_optimizer.matmul_patterns import is_activation_matmul, is_int8_matmul, weighted_matmul
from qdq_optimizer.runtime import load_inputs, run
from qdq_optimizer.testing.corpus import manifest_items
from qdq_optimizer.verify import sqnr

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "fixtures" / "corpus" / "transformers" / "manifest.json"


@dataclass
class MatMulCounts:
    """INT8 and total weighted GEMMs, attention (activation x activation) matmuls and convs."""

    gemm_int8: int
    gemm: int
    bmm_int8: int
    bmm: int
    conv_int8: int
    conv: int


def matmul_counts(model: onnx.ModelProto | QGraph) -> MatMulCounts:
    """Count what TensorRT could run in INT8: a weighted GEMM needs its weight quantized (DQ,
    possibly behind Transpose/Identity/Reshape) and its activation input through DQ; an
    attention matmul needs both inputs through DQ."""
    graph = model if isinstance(model, QGraph) else QGraph.from_model(model)
    c = MatMulCounts(0, 0, 0, 0, 0, 0)
    for node in graph.nodes:
        if node.op in ("MatMul", "Gemm"):
            wm = weighted_matmul(graph, node)
            if wm is not None:
                c.gemm += 1
                c.gemm_int8 += wm.weight.quantized and is_int8_tensor(graph, wm.data)
            elif is_activation_matmul(graph, node):
                c.bmm += 1
                c.bmm_int8 += is_int8_matmul(graph, node)
        elif node.op == "Conv" and len(node.inputs) >= 2:
            c.conv += 1
            c.conv_int8 += all(graph.dq_producing(t) is not None for t in node.inputs[:2])
    return c


def joined_outputs(outputs: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """All outputs as one float64 vector, in the reference's output order."""
    return np.concatenate([np.asarray(outputs[n], np.float64).ravel() for n in names])


def output_sqnr(reference: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> float:
    names = list(reference)
    if set(test) != set(names):  # a producer renamed the outputs: match them by position
        test = dict(zip(names, test.values(), strict=True))
    return sqnr(joined_outputs(reference, names), joined_outputs(test, names))


def same_graph(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """Same nodes, initializers, inputs and outputs (value_info order may differ)."""
    return all(
        list(getattr(a.graph, f)) == list(getattr(b.graph, f))
        for f in ("node", "initializer", "input", "output")
    )


@dataclass
class Row:
    name: str
    exit: int
    error: str
    gemm: str
    bmm: str
    conv: str
    lint_before: int | None
    lint_after: int | None
    sqnr_in: float
    sqnr_out: float | None
    idempotent: bool | None
    ms: float
    lint_rules_after: dict[str, int]
    changes: dict[str, int]


def _arrow(before: int, after: int | None, total: int) -> str:
    return f"{before}->{'-' if after is None else after}/{total}"


def measure(entry: dict, root: Path = ROOT, allow_asymmetric: bool = False) -> Row:
    quantized, float_path = root / entry["quantized"], root / entry["float"]
    feeds = load_inputs(root / entry["inputs"])
    model = onnx.load(str(quantized))
    before = matmul_counts(model)
    try:
        lint_before: int | None = len(
            lint(model, entry["rules"], allow_asymmetric=allow_asymmetric)
        )
    except QdqoptError:  # the same error optimize reports below
        lint_before = None
    reference = run(float_path, feeds)
    sqnr_in = output_sqnr(reference, run(model, feeds))
    t = time.perf_counter()
    try:
        out, report = optimize(model, entry["rules"], allow_asymmetric=allow_asymmetric)
    except QdqoptError as exc:
        code, error, out = exc.exit_code, f"{type(exc).__name__}: {exc}", None
    except Exception as exc:  # noqa: BLE001  (the CLI's exit 3: an internal error)
        code, error, out = (
            EXIT_INTERNAL,
            f"{type(exc).__name__}: {' '.join(str(exc).split())}",
            None,
        )
    else:
        code, error = 0, ""
    ms = (time.perf_counter() - t) * 1000.0
    if out is None:
        return Row(entry["name"], code, error[:200], _arrow(before.gemm_int8, None, before.gemm),
                   _arrow(before.bmm_int8, None, before.bmm),
                   _arrow(before.conv_int8, None, before.conv), lint_before, None, sqnr_in, None,
                   None, ms, {}, {})  # fmt: skip
    after = matmul_counts(out)
    problems = lint(out, entry["rules"], allow_asymmetric=allow_asymmetric)
    by_rule: dict[str, int] = {}
    for p in problems:
        by_rule[p.rule_id] = by_rule.get(p.rule_id, 0) + 1
    again, report2 = optimize(out, entry["rules"], allow_asymmetric=allow_asymmetric)
    idempotent = report2.total_changes == 0 and same_graph(again, out)
    return Row(
        entry["name"], 0, "",
        _arrow(before.gemm_int8, after.gemm_int8, before.gemm),
        _arrow(before.bmm_int8, after.bmm_int8, before.bmm),
        _arrow(before.conv_int8, after.conv_int8, before.conv),
        lint_before, len(problems), sqnr_in, output_sqnr(reference, run(out, feeds)),
        idempotent, ms, by_rule, {r.rule_id: r.count for r in report.results if r.count},
    )  # fmt: skip


def header() -> str:
    return (f"{'graph':22s} {'exit':>4s} {'gemm':>9s} {'bmm':>8s} {'conv':>8s} {'lint':>7s} "
          f"{'SQNR in':>7s} {'out':>6s} {'delta':>6s} {'idem':>4s} {'ms':>6s}  changes")  # fmt: skip


def line(r: Row) -> str:
    lint_txt = f"{'-' if r.lint_before is None else r.lint_before}->{'-' if r.lint_after is None else r.lint_after}"
    out = "-" if r.sqnr_out is None else f"{r.sqnr_out:6.2f}"
    delta = "-" if r.sqnr_out is None else f"{r.sqnr_out - r.sqnr_in:+6.2f}"
    idem = "-" if r.idempotent is None else ("yes" if r.idempotent else "NO")
    changes = r.error or ", ".join(f"{k} {v}" for k, v in r.changes.items()) or "-"
    return (f"{r.name:22s} {r.exit:4d} {r.gemm:>9s} {r.bmm:>8s} {r.conv:>8s} {lint_txt:>7s} "
          f"{r.sqnr_in:7.2f} {out:>6s} {delta:>6s} {idem:>4s} {r.ms:6.0f}  {changes}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pattern", nargs="?", default="", help="only entries whose name matches")
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument(
        "--allow-asymmetric", action="store_true", help="as optimize's: asymmetric int8 accepted"
    )
    ap.add_argument("--rules", help="run every entry with this rule set instead of its own")
    args = ap.parse_args(argv)
    if not args.manifest.is_file():
        print(f"bench_transformers: no manifest {args.manifest} (make corpus-transformers)",
              file=sys.stderr)  # fmt: skip
        return 2
    entries = [
        {**e, "rules": args.rules or e["rules"]}
        for e in manifest_items(args.manifest)  # its hook builds the held-out sets
        if re.search(args.pattern, e["name"])
    ]
    rows = []
    print(header(), flush=True)
    for e in entries:
        rows.append(measure(e, allow_asymmetric=args.allow_asymmetric))
        print(line(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    lost = sum(1 for r in rows if r.exit)
    print(f"\n{len(rows)} graphs, {lost} failed to optimize")
    return 0


if __name__ == "__main__":
    sys.exit(main())
