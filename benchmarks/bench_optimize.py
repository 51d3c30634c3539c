"""Time qdqopt optimize phase by phase against a plain ``onnx.load`` + ``onnx.save``.

Graphs: the YOLOv7 fixture (about 1,000 nodes; fixtures/models/yolov7-naive.onnx when present)
and generated YOLO-topology Q/DQ graphs of about 1k, 10k and 100k nodes (with duplicate and
doubled pairs, so the cleanup rules have work to do). For each graph and rule set it prints ms
per phase, the rule phase per 1,000 nodes (flat = linear) and the ratio of rule application to the
plain load+save round trip (goal: <= 1).

    python benchmarks/bench_optimize.py [--sizes 1000,10000,100000] [--rules cleanup,tensorrt]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from qdq_builders import yolo_like  # noqa: E402

from qdq_optimizer.fixpoint import apply_rules  # noqa: E402
from qdq_optimizer.graph import QGraph  # noqa: E402
from qdq_optimizer.model_io import (  # noqa: E402
    finalize,  # noqa: E402
    load_model,
    save_model,
)
from qdq_optimizer.ruleset import available_rulesets, load_ruleset  # noqa: E402
from qdq_optimizer.validate import validate_model  # noqa: E402

NODES_PER_STAGE = 45  # yolo_like(redundant=True) adds about this many nodes per stage


def _best(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t)
    return best * 1000.0, result


def bench(path: Path, rules: str, tmp: Path, repeat: int) -> dict[str, float]:
    out = tmp / "out.onnx"
    ruleset = load_ruleset(rules)
    t: dict[str, float] = {}
    t["load"], model = _best(lambda: load_model(path), repeat)
    t["validate"], _ = _best(lambda: validate_model(model), repeat)
    t["import"], _ = _best(lambda: QGraph.from_model(model), repeat)

    def plain_round_trip() -> float:
        t0 = time.process_time()
        m = onnx.load(path)
        onnx.save(m, out)
        return (time.process_time() - t0) * 1000.0

    def rules_phase():
        g = QGraph.from_model(model)
        t0 = time.process_time()
        run = apply_rules(g, ruleset)
        return (time.process_time() - t0) * 1000.0, g, run

    # Interleaved, so the baseline and the rules see the same load on this shared machine.
    plain, samples = [], []
    for _ in range(repeat):
        plain.append(plain_round_trip())
        samples.append(rules_phase())
    t["plain_load_save"] = min(plain)
    t["rules"], graph, run = min(samples, key=lambda s: s[0])
    t0 = time.process_time()
    final, _ = finalize(graph)  # the graph the timed rule run produced
    t["finalize"] = (time.process_time() - t0) * 1000.0
    t["save"], _ = _best(lambda: save_model(final, out), repeat)
    t["nodes"] = len(model.graph.node)
    t["changes"] = sum(r.count for r in run.results)
    t["iterations"] = run.iterations
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--rules", default="cleanup,tensorrt")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rule_sets = [r for r in args.rules.split(",") if r in available_rulesets()]
    graphs: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="qdqopt-bench-") as tmp_s:
        tmp = Path(tmp_s)
        fixture = ROOT / "fixtures" / "models" / "yolov7-naive.onnx"
        if fixture.exists():
            graphs.append(("yolov7-naive fixture", fixture))
        for n in (int(s) for s in args.sizes.split(",") if s):
            p = tmp / f"gen-{n}.onnx"
            model = yolo_like(stages=max(1, n // NODES_PER_STAGE), width=4, size=16, redundant=True)
            onnx.save(model, p)
            graphs.append((f"generated ~{n // 1000}k", p))
        header = (
            f"{'graph':22} {'rules':9} {'nodes':>7} {'chg':>5} {'it':>2} {'load':>8} {'valid':>8} "
            f"{'import':>8} {'rules':>8} {'final':>8} {'save':>8} {'onnx l+s':>9} "
            f"{'rules/1k':>8} {'ratio':>6}"
        )
        print(header)
        print("-" * len(header))
        for label, path in graphs:
            for rules in rule_sets:
                repeat = args.repeat if path.stat().st_size < 20e6 else 1
                t = bench(path, rules, tmp, repeat)
                per_k = t["rules"] / t["nodes"] * 1000
                ratio = t["rules"] / t["plain_load_save"]
                print(
                    f"{label:22} {rules:9} {t['nodes']:7d} {t['changes']:5d} {t['iterations']:2d} "
                    f"{t['load']:8.1f} {t['validate']:8.1f} {t['import']:8.1f} {t['rules']:8.1f} "
                    f"{t['finalize']:8.1f} {t['save']:8.1f} {t['plain_load_save']:9.1f} "
                    f"{per_k:8.2f} {ratio:6.2f}",
                    flush=True,
                )
    print(
        "CPU ms (process time; the machine is shared, so wall time is noisy), best of --repeat "
        "except finalize (one run); ratio = rules / (onnx.load + onnx.save of the same file)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
