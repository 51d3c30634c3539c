"""Is a corpus entry's SQNR loss beyond the criterion's noise floor? (issue 10, item 6)

For each named corpus entry: output SQNR against the float model for the input and for
``optimize`` (tensorrt rules), and the noise floor: how far the input's SQNR moves when every
activation scale is multiplied by 0.98 ... 1.02 (``qdq_optimizer.testing.noise_floor``), a change
with no accuracy meaning. A loss inside that spread is not evidence that a rule is wrong. The
paired mean applies ``optimize`` to the input and to each rescaled copy and averages the SQNR
change over those rounding realisations: the rules' own cost, which one realisation cannot show.

With ``--task`` the entry's task metric (box F1 or top-1 against the float model) is measured
instead of the SQNR, in its own units.

    python benchmarks/bench_noise_floor.py [--task] NAME [NAME ...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qdq_optimizer import api  # noqa: E402
from qdq_optimizer.testing import corpus  # noqa: E402
from qdq_optimizer.testing.noise_floor import noise_floor, paired_change  # noqa: E402


def task_metric(e: corpus.CorpusEntry):
    """The entry's task metric as a function of a model (saved to a temporary file for it)."""
    task = corpus.task_function(e)
    if task is None:
        return None

    def metric(m: onnx.ModelProto) -> float:
        with tempfile.TemporaryDirectory(prefix="qdqopt-noise-") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(m, path)
            return task(str(path), str(e.inputs))

    return metric


def main(args: list[str]) -> int:
    use_task = "--task" in args
    names = [a for a in args if a != "--task"]
    entries = {e.name: e for e in corpus.load_manifests()}
    unknown = [n for n in names if n not in entries]
    if unknown or not names:
        print(f"unknown corpus entries: {', '.join(unknown) or '(none named)'}", file=sys.stderr)
        return 2
    unit = "task" if use_task else "dB"
    print(
        f"entry | input {unit} | output {unit} | change | floor: worst shift, spread (scale x0.98..1.02)"
        " | paired change: mean, min, max"
    )
    for name in names:
        e = entries[name]
        corpus.prepare(e)
        metric = task_metric(e) if use_task else None
        if use_task and metric is None:
            print(f"{name} | no task metric", flush=True)
            continue
        out, _ = api.optimize(str(e.model), e.rules, ignore=e.ignore, lint_result=False)
        s_out = metric(out) if metric else corpus.output_sqnr(out, e.reference, e.inputs)
        nf = noise_floor(e.model, e.reference, e.inputs, metric=metric)

        def rewrite(m, e=e):
            return api.optimize(m, e.rules, ignore=e.ignore, lint_result=False)[0]

        pc = paired_change(e.model, rewrite, e.reference, e.inputs, metric=metric)
        pc = pc.changes_db.values()
        print(
            f"{name} | {nf.sqnr_db:.2f} | {s_out:.2f} | {s_out - nf.sqnr_db:+.2f} | "
            f"{nf.worst_shift_db:+.2f}, {nf.spread_db:.2f} | "
            f"{sum(pc) / len(pc):+.2f}, {min(pc):+.2f}, {max(pc):+.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
