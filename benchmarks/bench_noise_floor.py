"""Is a corpus entry's SQNR loss beyond the criterion's noise floor? (issue 10, item 6)

For each named corpus entry: output SQNR against the float model for the input and for
``optimize`` (tensorrt rules), and the noise floor: how far the input's SQNR moves when every
activation scale is multiplied by 0.98 ... 1.02 (``qdq_optimizer.testing.noise_floor``), a change
with no accuracy meaning. A loss inside that spread is not evidence that a rule is wrong. The
paired mean applies ``optimize`` to the input and to each rescaled copy and averages the SQNR
change over those rounding realisations: the rules' own cost, which one realisation cannot show.

    python benchmarks/bench_noise_floor.py NAME [NAME ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qdq_optimizer import api  # noqa: E402
from qdq_optimizer.testing import corpus  # noqa: E402
from qdq_optimizer.testing.noise_floor import noise_floor, paired_change  # noqa: E402


def main(names: list[str]) -> int:
    entries = {e.name: e for e in corpus.load_manifests()}
    unknown = [n for n in names if n not in entries]
    if unknown or not names:
        print(f"unknown corpus entries: {', '.join(unknown) or '(none named)'}", file=sys.stderr)
        return 2
    print(
        "entry | input dB | output dB | change | floor: worst shift, spread (scale x0.98..1.02)"
        " | paired change: mean, min, max"
    )
    for name in names:
        e = entries[name]
        corpus.prepare(e)
        out, _ = api.optimize(str(e.model), e.rules, ignore=e.ignore, lint_result=False)
        s_out = corpus.output_sqnr(out, e.reference, e.inputs)
        nf = noise_floor(e.model, e.reference, e.inputs)

        def rewrite(m, e=e):
            return api.optimize(m, e.rules, ignore=e.ignore, lint_result=False)[0]

        pc = paired_change(e.model, rewrite, e.reference, e.inputs).changes_db.values()
        print(
            f"{name} | {nf.sqnr_db:.2f} | {s_out:.2f} | {s_out - nf.sqnr_db:+.2f} | "
            f"{nf.worst_shift_db:+.2f}, {nf.spread_db:.2f} | "
            f"{sum(pc) / len(pc):+.2f}, {min(pc):+.2f}, {max(pc):+.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
