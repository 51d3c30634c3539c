"""Is a corpus entry's SQNR loss beyond the criterion's noise? (issue 10, item 6)

For each named corpus entry: output SQNR against the float model for the input and for
``optimize`` (the entry's rules and calibration data, as the criterion runs it), then the two
sources of spread in that one number (``qdq_optimizer.testing.noise_floor``):

- the held-out samples: how many it rests on (Kish's effective count of the per-sample noise,
  input -> output), the share of the output's noise in its 3 worst samples, and a 95 % bootstrap
  interval of the change over the samples (paired: the same draw for input and output);
- the rounding realisation: every activation scale times 0.98 ... 1.02, a change with no
  accuracy meaning. ``floor`` is how far that moves the input's SQNR; ``paired`` applies
  ``optimize`` to each rescaled copy and gives the mean change +- its standard error (the rules'
  own cost, which one realisation cannot show) and where the given input's SQNR ranks among its
  realisations (1 of 7: the given rounding is the luckiest, and any rewrite regresses to the mean).

With ``--task`` the entry's task metric (box F1 or top-1 against the float model) is measured
instead of the SQNR, in its own units. ``optimize`` runs as the criterion runs it, with the float
model as ``--reference`` (``--no-reference``: without it, as ``bench_corpus.py --no-reference``).

    python benchmarks/bench_noise_floor.py [--task] [--no-reference] NAME [NAME ...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qdq_optimizer import api  # noqa: E402
from qdq_optimizer.testing import corpus  # noqa: E402
from qdq_optimizer.testing.held_out import effective_samples, model_sample_noise  # noqa: E402
from qdq_optimizer.testing.noise_floor import (  # noqa: E402
    bootstrap_delta_ci,
    noise_floor,
    paired_change,
)


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
    with_reference = "--no-reference" not in args
    names = [a for a in args if a not in ("--task", "--no-reference")]
    entries = {e.name: e for e in corpus.load_manifests()}
    unknown = [n for n in names if n not in entries]
    if unknown or not names:
        print(f"unknown corpus entries: {', '.join(unknown) or '(none named)'}", file=sys.stderr)
        return 2
    unit = "task" if use_task else "dB"
    print(
        f"entry | input {unit} | output {unit} | change | samples: n, effective in->out, worst-3"
        " share, 95% bootstrap (SQNR only) | floor: worst shift, spread (scale x0.98..1.02) |"
        " paired: mean +- se (min, max), input rank"
    )
    for name in names:
        e = entries[name]
        corpus.prepare(e)
        metric = task_metric(e) if use_task else None
        if use_task and metric is None:
            print(f"{name} | no task metric", flush=True)
            continue

        def rewrite(m, e=e):
            return api.optimize(
                m,
                e.rules,
                ignore=e.ignore,
                calibration_data=e.calibration,
                reference=str(e.reference) if with_reference else None,
                lint_result=False,
            )[0]

        out = rewrite(str(e.model))
        s_out = metric(out) if metric else corpus.output_sqnr(out, e.reference, e.inputs)
        nf = noise_floor(e.model, e.reference, e.inputs, metric=metric)
        samples = "-"
        if metric is None:
            before = model_sample_noise(e.model, e.reference, e.inputs)
            after = model_sample_noise(out, e.reference, e.inputs)
            low, high = bootstrap_delta_ci(before, after)
            worst3 = np.sort(after)[::-1][:3].sum() / after.sum()
            samples = (
                f"{len(before)}, {effective_samples(before):.1f}->{effective_samples(after):.1f}, "
                f"{worst3:.2f}, [{low:+.2f}, {high:+.2f}]"
            )
        pc = paired_change(e.model, rewrite, e.reference, e.inputs, metric=metric)
        ch = pc.changes_db.values()
        print(
            f"{name} | {nf.sqnr_db:.2f} | {s_out:.2f} | {s_out - nf.sqnr_db:+.2f} | "
            f"{samples} | {nf.worst_shift_db:+.2f}, {nf.spread_db:.2f} | "
            f"{pc.mean_db:+.2f} +- {pc.se_db:.2f} ({min(ch):+.2f}, {max(ch):+.2f}), "
            f"{pc.rank_of(1.0)} of {len(pc.before_db)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
