"""Where the conversion to signed symmetric int8 costs accuracy: for corpus entries, output SQNR
against the float model on the held-out inputs with the input graph's uint8/asymmetric activation
pairs all converted (``symmetric-int8``'s own code, nothing else rewritten) and each pair alone
(``qdq_optimizer.testing.symmetric_cost``).

Usage: ``python benchmarks/bench_symmetric_cost.py NAME [NAME ...] [--top N]`` (exact entry names).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from qdq_optimizer.testing.corpus import load_manifests, prepare  # noqa: E402
from qdq_optimizer.testing.symmetric_cost import conversion_costs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", help="corpus entry names")
    ap.add_argument("--top", type=int, default=0, help="print only the N costliest pairs")
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


if __name__ == "__main__":
    main()
