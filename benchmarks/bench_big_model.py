"""Big inputs: a 2.5 GB model with external data, and a 100k-node graph.

1. Generates (in a temp folder) a Q/DQ model of ``--gb`` GB of int8 weights stored as external
   data, then, in a fresh child process, loads it (``model_io.load_model``), optimizes it with the
   ``tensorrt`` rule set (``cleanup`` if that is missing) and saves it with external data
   (``model_io.save_model``). Prints each phase's time, the child's peak RSS and its ratio to
   the model size (goal: <= 2.5x).
2. Runs a 100k-node chain through load / validate / optimize / save with the default recursion
   limit and prints the time per phase.

Usage: ``python benchmarks/bench_big_model.py [--gb 2.5] [--nodes 100000] [--skip-big]``.
Needs about 2 x ``--gb`` GB of free disk in the temp folder (checked first).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM = 4096  # each layer: int8 weight [DIM, DIM] = 16 MiB


def _rules() -> str:
    return "tensorrt" if (ROOT / "rules" / "tensorrt.yaml").exists() else "cleanup"


def generate_big(folder: Path, gb: float) -> tuple[Path, int]:
    """Write a Q/DQ MatMul chain whose int8 weights (external data) total ``gb`` GB.

    Weights are written one at a time straight to the data file, so generation needs little
    memory. Returns the model path and its total size on disk.
    """
    layers = max(1, int(gb * 1e9) // (DIM * DIM))
    data_name = "big.onnx.data"
    inits: list[TensorProto] = []
    nodes = []
    act_scale = numpy_helper.from_array(np.array(0.02, np.float32), "act_scale")
    act_zp = numpy_helper.from_array(np.array(0, np.int8), "act_zp")
    inits += [act_scale, act_zp]
    rng = np.random.default_rng(0)
    offset = 0
    prev = "x"
    with open(folder / data_name, "wb") as f:
        for i in range(layers):
            w = rng.integers(-127, 128, size=(DIM, DIM), dtype=np.int8)
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.INT8, dims=[DIM, DIM])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", offset), ("length", w.nbytes)):
                e = t.external_data.add()
                e.key, e.value = k, str(v)
            offset += w.nbytes
            del w
            inits += [
                t,
                numpy_helper.from_array(np.full(DIM, 1e-3, np.float32), f"w{i}_scale"),
                numpy_helper.from_array(np.zeros(DIM, np.int8), f"w{i}_zp"),
            ]
            nodes += [
                helper.make_node(
                    "QuantizeLinear", [prev, "act_scale", "act_zp"], [f"q{i}"], name=f"q{i}"
                ),
                helper.make_node(
                    "DequantizeLinear", [f"q{i}", "act_scale", "act_zp"], [f"dq{i}"], name=f"dq{i}"
                ),
                helper.make_node(
                    "DequantizeLinear",
                    [f"w{i}", f"w{i}_scale", f"w{i}_zp"],
                    [f"wdq{i}"],
                    name=f"wdq{i}",
                    axis=1,
                ),
                helper.make_node("MatMul", [f"dq{i}", f"wdq{i}"], [f"mm{i}"], name=f"mm{i}"),
                helper.make_node("Relu", [f"mm{i}"], [f"y{i}"], name=f"relu{i}"),
            ]
            prev = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, DIM])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, DIM])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = folder / "big.onnx"
    path.write_bytes(model.SerializeToString())
    return path, path.stat().st_size + (folder / data_name).stat().st_size


def run_pipeline(src: Path, out: Path, rules: str) -> dict[str, float]:
    """optimize (which loads with model_io and validates) -> save; the caller measures peak RSS."""
    from qdq_optimizer.api import optimize
    from qdq_optimizer.model_io import save_model

    t = time.perf_counter()
    optimized, report = optimize(src, rules)
    times = {f"{k}_s": v / 1000 for k, v in report.timings_ms.items()}
    times["optimize_s"] = time.perf_counter() - t
    t = time.perf_counter()
    data = save_model(optimized, out)
    times["save_s"] = time.perf_counter() - t
    times["external_data"] = float(data is not None)
    return times


def _child(src: str, out: str, rules: str) -> None:
    times = run_pipeline(Path(src), Path(out), rules)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**times, "peak_rss_bytes": peak_kib * 1024}))


def bench_big(gb: float, tmp: Path) -> None:
    need = int(gb * 1e9 * 2.2)
    free = shutil.disk_usage(tmp).free
    if free < need:
        print(f"big model: skipped, needs {need / 1e9:.1f} GB free in {tmp}, has {free / 1e9:.1f}")
        return
    t = time.perf_counter()
    src, size = generate_big(tmp, gb)
    print(f"big model: generated {size / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s")
    rules = _rules()
    out = tmp / "out" / "big-opt.onnx"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(src), str(out), rules],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"big model: pipeline failed: {last}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    out_size = sum(p.stat().st_size for p in out.parent.iterdir())
    peak = res["peak_rss_bytes"]
    print(
        f"big model ({rules}): optimize {res['optimize_s']:.1f} s (load {res['load_s']:.1f}, "
        f"validate+import {res['validate_s'] + res['import_s']:.1f}, rules {res['rules_s']:.1f}, "
        f"finalize {res['finalize_s']:.1f}), save {res['save_s']:.1f} s; "
        f"output {out_size / 1e9:.2f} GB in {sorted(p.name for p in out.parent.iterdir())}"
    )
    print(
        f"big model: peak RSS {peak / 1e9:.2f} GB = {peak / size:.2f}x the model size "
        f"({size / 1e9:.2f} GB); goal <= 2.5x: {'OK' if peak <= 2.5 * size else 'OVER'}"
    )


def bench_nodes(n: int, tmp: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from hardening_util import chain_model

    from qdq_optimizer.api import optimize
    from qdq_optimizer.model_io import load_model, save_model
    from qdq_optimizer.validate import validate_model

    src = tmp / "chain.onnx"
    save_model(chain_model(n), src)
    limit = sys.getrecursionlimit()
    times = {}
    t = time.perf_counter()
    model = load_model(src)
    times["load"] = time.perf_counter() - t
    t = time.perf_counter()
    validate_model(model)
    times["validate"] = time.perf_counter() - t
    for rules in dict.fromkeys(["cleanup", _rules()]):
        t = time.perf_counter()
        optimized, _ = optimize(src, rules)
        times[f"optimize[{rules}]"] = time.perf_counter() - t
    t = time.perf_counter()
    save_model(optimized, tmp / "chain-opt.onnx")
    times["save"] = time.perf_counter() - t
    assert sys.getrecursionlimit() == limit
    print(
        f"{n} nodes (recursion limit {limit}): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.5)
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qdqopt-bench-") as d:
        if not args.skip_big:
            big = Path(d) / "big"
            big.mkdir()
            bench_big(args.gb, big)
            shutil.rmtree(big)
        bench_nodes(args.nodes, Path(d))


if __name__ == "__main__":
    main()
