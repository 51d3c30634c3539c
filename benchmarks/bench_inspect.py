"""Time `qdqopt inspect` parsing on a generated ~10 MB engine layer report.

The report imitates TensorRT 8.6 output (CaskConvolution layers with Metadata, Q/DQ and layout
reformats, long tactic names) so the parser does its real work. Prints file size, layer count
and the best of several runs for load_report, summarize and the INT8 gate.
Usage: python benchmarks/bench_inspect.py [--mb 10] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from qdq_optimizer.engines import check, load_report, summarize

FORMATS = [
    "Thirty-two wide channel vectorized row major Int8 format",
    "Channel major FP16 format where channel % 8 == 0",
    "Row major linear FP32",
]


def make_report(target_bytes: int) -> dict:
    layers, i, size, prev = [], 0, 0, "input"
    while size < target_bytes:
        kind = i % 10
        out = f"/blocks.{i}/out_tensor_{i}"
        fmt_in = FORMATS[0] if kind != 9 else FORMATS[1]
        fmt_out = FORMATS[0] if kind not in (8, 9) else FORMATS[1]
        if kind == 9:
            layer = {
                "Name": f"/blocks.{i}/QuantizeLinear",
                "LayerType": "Reformat",
                "ParameterType": "Reformat",
                "Origin": "QDQ",
                "Metadata": f"[ONNX Layer: /blocks.{i}/QuantizeLinear]",
            }
            fmt_out = FORMATS[0]
        else:
            layer = {
                "Name": f"/blocks.{i}/conv/Conv + PWN(PWN(/blocks.{i}/act/Sigmoid), /blocks.{i}/act/Mul)",
                "LayerType": "CaskConvolution",
                "ParameterType": "Convolution",
                "Kernel": [3, 3],
                "PaddingMode": "kEXPLICIT_ROUND_DOWN",
                "PrePadding": [1, 1],
                "PostPadding": [1, 1],
                "Stride": [1, 1],
                "Dilation": [1, 1],
                "OutMaps": 256,
                "Groups": 1,
                "Weights": {"Type": "Int8", "Count": 589824},
                "Bias": {"Type": "Float", "Count": 256},
                "HasSparseWeights": 0,
                "Activation": "SILU",
                "HasBias": 1,
                "HasReLU": 0,
                "Metadata": "\u001e".join(
                    f"[ONNX Layer: /blocks.{i}/{n}]"
                    for n in ("DequantizeLinear", "conv/Conv", "act/Sigmoid", "act/Mul")
                ),
                "TacticName": "sm86_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32_nchw_vect_c_32_tilesize128x128x64_stage3_warpsize2x2x1_g1_tensor16x8x32_t1r3s3",
                "TacticValue": "0x9cb304e2edbc1221",
            }
        layer["Inputs"] = [
            {
                "Name": prev,
                "Location": "Device",
                "Dimensions": [1, 256, 80, 80],
                "Format/Datatype": fmt_in,
            }
        ]
        layer["Outputs"] = [
            {
                "Name": out,
                "Location": "Device",
                "Dimensions": [1, 256, 80, 80],
                "Format/Datatype": fmt_out,
            }
        ]
        layers.append(layer)
        size += len(json.dumps(layer, indent=1)) + 2
        prev, i = out, i + 1
    return {"Layers": layers, "Bindings": ["input", prev]}


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.graph.json"
        path.write_text(json.dumps(make_report(int(args.mb * 2**20)), indent=1))
        size = path.stat().st_size
        report = load_report(path)
        t_json = best_of(lambda: json.loads(path.read_text()), args.repeat)
        t_load = best_of(lambda: load_report(path), args.repeat)
        t_sum = best_of(lambda: summarize(report), args.repeat)
        t_gate = best_of(lambda: check(report), args.repeat)
        s = summarize(report)
    print(f"report: {size / 2**20:.1f} MiB, {len(report.layers)} layers")
    print(f"json.loads alone (floor): {t_json * 1000:.0f} ms")
    print(f"load_report: {t_load * 1000:.0f} ms  ({size / 2**20 / t_load:.0f} MiB/s)")
    print(f"summarize:   {t_sum * 1000:.0f} ms")
    print(f"check int8:  {t_gate * 1000:.0f} ms")
    print(f"total:       {(t_load + t_sum + t_gate) * 1000:.0f} ms (best of {args.repeat})")
    print(
        f"sanity: {len(s.qdq_reformats)} Q/DQ reformats, {len(s.non_int8_compute)} non-INT8 compute"
    )


if __name__ == "__main__":
    main()
