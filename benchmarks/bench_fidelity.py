"""Fidelity and placement numbers of the TensorRT rules on every YOLO fixture.

For each fixture: Q/DQ counts before -> after, the rules that changed something, and the SQNR
(dB) against the float model under ONNX Runtime on the ten held-out real photographs of
fixtures/models/photos-val-160.npz (all outputs together) of the input Q/DQ model and of the
optimized model, once with the data-free ``max`` scale-group policy and once with
``--calibration-data fixtures/models/photos-calib-160.npz`` (policy ``calibrated``); "subsets" is
the range of that delta when two of the ten calibration views are left out (five ways), to show
how much the result hangs on the calibration set.

    python benchmarks/bench_fidelity.py
"""

from __future__ import annotations

from pathlib import Path

from qdq_optimizer.api import optimize
from qdq_optimizer.calibration import CalibrationData
from qdq_optimizer.runtime import load_inputs, run
from qdq_optimizer.verify import sqnr

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
RULES = {"yolov7-tiny": "yolov7-tiny", "yolov7": "yolov7", "yolov8ish": "yolov8"}
LEAVE_OUT = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def main() -> None:
    val = load_inputs(MODELS / "photos-val-160.npz")
    calib = CalibrationData.load(MODELS / "photos-calib-160.npz")
    print(
        f"{'fixture':22s} {'rules':12s} {'Q':>9s} {'DQ':>9s}  {'SQNR in':>7s} "
        f"{'max':>6s} {'delta':>6s}  {'calib':>6s} {'delta':>6s} {'subsets':>13s}  changes (max)"
    )
    for model, rules in RULES.items():
        ref = run(MODELS / f"{model}-float.onnx", val)["outputs"]
        for form in ("naive", "naive-bn", "ort", "right"):
            path = MODELS / f"{model}-{form}.onnx"
            out, rep = optimize(path, rules)
            cal, _ = optimize(path, rules, calibration_data=calib)
            s_in = sqnr(ref, run(path, val)["outputs"])
            s_max = sqnr(ref, run(out, val)["outputs"])
            s_cal = sqnr(ref, run(cal, val)["outputs"])
            spread = []
            for drop in LEAVE_OUT if form != "right" else []:
                keep = [i for i in range(len(calib.arrays["images"])) if i not in drop]
                sub = CalibrationData({"images": calib.arrays["images"][keep]})
                out_sub, _ = optimize(path, rules, calibration_data=sub)
                spread.append(sqnr(ref, run(out_sub, val)["outputs"]) - s_in)
            sub_txt = f"{min(spread):+.2f}..{max(spread):+.2f}" if spread else "-"
            st = rep.stats
            q = f"{st['quantize_before']}->{st['quantize_after']}"
            dq = f"{st['dequantize_before']}->{st['dequantize_after']}"
            ch = ", ".join(f"{r.rule_id} {r.count}" for r in rep.results if r.count)
            print(
                f"{model + '-' + form:22s} {rules:12s} {q:>9s} {dq:>9s}  {s_in:7.2f} "
                f"{s_max:6.2f} {s_max - s_in:+6.2f}  {s_cal:6.2f} {s_cal - s_in:+6.2f} {sub_txt:>13s}"
                f"  {ch or '-'}"
            )


if __name__ == "__main__":
    main()
