"""Where the conversion to signed symmetric int8 costs accuracy: for corpus entries, output SQNR
against the float model on the held-out inputs with the input graph's uint8/asymmetric activation
pairs all converted (``symmetric-int8``'s own code, nothing else rewritten) and each pair alone
(``qdq_optimizer.testing.symmetric_cost``).

With ``--alternatives``, also the held-out SQNR of the converted input with other scales chosen
from the entry's calibration samples alone (none is adopted by the rule: docs/rules.md, Known
accuracy limits): least-error on the calibration histograms (half-code pairs, all pairs), every
scale x0.9, and a greedy x0.9/x0.8 per pair judged on the calibration samples' output error.

Usage: ``python benchmarks/bench_symmetric_cost.py NAME [NAME ...] [--top N] [--alternatives]``
(exact entry names).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import onnx  # noqa: E402

from qdq_optimizer.testing.corpus import load_manifests, output_sqnr, prepare  # noqa: E402
from qdq_optimizer.testing.symmetric_cost import (  # noqa: E402
    calibration_judged_factors,
    conversion_costs,
    convert,
    convertible_pairs,
    least_error_factors,
    rescale_pairs,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help="corpus entry names")
    ap.add_argument("--top", type=int, default=0, help="print only the N costliest pairs")
    ap.add_argument("--alternatives", action="store_true", help="scales chosen otherwise")
    args = ap.parse_args()
    entries = {e.name: e for e in load_manifests()}
    unknown = [n for n in args.names if n not in entries]
    if unknown:
        sys.exit(f"bench_symmetric_cost: no corpus entry named {', '.join(unknown)}")
    for name in args.names:
        e = entries[name]
        prepare(e)
        c = conversion_costs(e.model, e.reference, e.inputs)
        half = sum(p.half_codes for p in c.pairs)
        print(
            f"{name}: input {c.sqnr_input_db:.2f} dB, all {len(c.pairs)} pairs converted "
            f"{c.sqnr_all_db:.2f} ({c.cost_db:+.2f}; {half} with half the codes"
            + (f", {c.weights} weights re-quantized" if c.weights else "")
            + ")"
        )
        rows = sorted(c.pairs, key=lambda p: p.sqnr_db)
        for p in rows[: args.top or None]:
            print(
                f"  {p.sqnr_db - c.sqnr_input_db:+6.2f} dB  {'half ' if p.half_codes else '     '}"
                f"{p.q[:60]:60s} {p.detail}"
            )
        if args.alternatives:
            alternatives(e)


def alternatives(e) -> None:
    """Held-out SQNR of the converted input under each alternative choice of scales."""
    model = onnx.load(e.model)
    converted = convert(model)
    every = {name: 0.9 for _, name, _, _ in convertible_pairs(model)}
    choices = {
        "least-error, half-code pairs": least_error_factors(model, e.calibration),
        "least-error, all pairs": least_error_factors(model, e.calibration, False),
        "every scale x0.9": every,
        "x0.9/x0.8 judged on calibration": calibration_judged_factors(model, e.calibration),
    }
    for label, factors in choices.items():
        db = output_sqnr(rescale_pairs(converted, factors), e.reference, e.inputs)
        moved = sum(f != 1.0 for f in factors.values())
        print(f"  {label}: {db:.2f} dB ({moved} scales moved)")


if __name__ == "__main__":
    main()
