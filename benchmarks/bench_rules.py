"""Time the TensorRT fusion rules (rule set ``yolov7``, which extends ``tensorrt`` and
``cleanup``) on the YOLOv7 fixtures and on generated YOLO-block Q/DQ graphs of growing size.

Prints, per graph: nodes, rule application in ms (best of N, process time), ms per 1,000 nodes
(flat = linear) and the ratio to a plain ``onnx.load`` + ``onnx.save`` of the same file. Goal:
rule application on the ~1,000-node YOLOv7 graph under 200 ms.

    python benchmarks/bench_rules.py [--blocks 30,120,480] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx

from qdq_optimizer.fixpoint import apply_rules
from qdq_optimizer.graph import QGraph
from qdq_optimizer.ruleset import load_ruleset
from qdq_optimizer.testing.graphgen import FloatBuilder, naive_qdq

ROOT = Path(__file__).resolve().parents[1]
MIX = ["elan", "maxpool", "spp", "upsample", "residual", "split", "conv"]
ACTS = ["silu", "leaky", "relu"]


def best(fn, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        out = min(out, time.process_time() - t)
    return out * 1000.0


def bench(name: str, model: onnx.ModelProto, rules: str, repeat: int, tmp: Path) -> None:
    ruleset = load_ruleset(rules)
    path = tmp / "m.onnx"
    onnx.save(model, path)
    roundtrip = best(lambda: onnx.save(onnx.load(path), tmp / "o.onnx"), repeat)
    times, changes, iters = [], 0, 0
    for _ in range(repeat):
        g = QGraph.from_model(model)
        t = time.process_time()
        run = apply_rules(g, ruleset)
        times.append((time.process_time() - t) * 1000.0)
        changes = sum(r.count for r in run.results)
        iters = run.iterations
    n = len(model.graph.node)
    ms = min(times)
    print(
        f"{name:28s} {n:7d} nodes  rules {ms:8.1f} ms  {ms / n * 1000:6.1f} ms/1k nodes  "
        f"load+save {roundtrip:7.1f} ms  ratio {ms / roundtrip:5.2f}  changes {changes:5d}  iterations {iters}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="30,120,480")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for fixture in ("yolov7-naive", "yolov7-naive-bn", "yolov7-ort", "yolov7-right"):
            p = ROOT / "fixtures" / "models" / f"{fixture}.onnx"
            if p.exists():
                bench(fixture, onnx.load(p), "yolov7", args.repeat, tmp)
        for b in (int(x) for x in args.blocks.split(",")):
            kinds = [MIX[i % len(MIX)] for i in range(b)]
            acts = [ACTS[i % len(ACTS)] for i in range(b)]
            model = naive_qdq(FloatBuilder(seed=b).build(kinds, acts), seed=b)
            bench(f"generated {b} blocks", model, "yolov7", max(1, args.repeat - 1), tmp)


if __name__ == "__main__":
    main()
