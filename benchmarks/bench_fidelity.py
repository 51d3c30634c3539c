"""Fidelity and placement numbers of the TensorRT rules on every YOLO fixture.

For each fixture: Q/DQ counts before -> after, the rules that changed something, and the SQNR
(dB) of the input Q/DQ model and of the optimized model against the float model under ONNX
Runtime on the 16 synthetic-shape images of fixtures/models/images-160.npz (all outputs together,
and the median over images).

    python benchmarks/bench_fidelity.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qdq_optimizer.api import optimize
from qdq_optimizer.verify import session, sqnr

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
RULES = {"yolov7-tiny": "yolov7-tiny", "yolov7": "yolov7", "yolov8ish": "yolov8"}


def per_image(model, images: np.ndarray) -> list[np.ndarray]:
    sess = session(model)
    return [sess.run(None, {"images": im[None]})[0] for im in images]


def main() -> None:
    images = np.load(MODELS / "images-160.npz")["all"].astype(np.float32) / 255
    print(
        f"{'fixture':22s} {'rules':12s} {'Q':>9s} {'DQ':>9s}  {'SQNR in':>7s} {'out':>6s} {'delta':>6s}  {'median in':>9s} {'out':>6s}  changes"
    )
    for model, rules in RULES.items():
        ref = per_image(MODELS / f"{model}-float.onnx", images)
        for form in ("naive", "naive-bn", "ort", "right"):
            path = MODELS / f"{model}-{form}.onnx"
            out, rep = optimize(path, rules)
            a, b = per_image(path, images), per_image(out, images)
            s_in = sqnr(np.concatenate(ref), np.concatenate(a))
            s_out = sqnr(np.concatenate(ref), np.concatenate(b))
            m_in = float(np.median([sqnr(r, x) for r, x in zip(ref, a, strict=True)]))
            m_out = float(np.median([sqnr(r, x) for r, x in zip(ref, b, strict=True)]))
            st = rep.stats
            q = f"{st['quantize_before']}->{st['quantize_after']}"
            dq = f"{st['dequantize_before']}->{st['dequantize_after']}"
            ch = ", ".join(f"{r.rule_id} {r.count}" for r in rep.results if r.count)
            print(
                f"{model + '-' + form:22s} {rules:12s} {q:>9s} {dq:>9s}  {s_in:7.2f} {s_out:6.2f} {s_out - s_in:+6.2f}  {m_in:9.2f} {m_out:6.2f}  {ch or '-'}"
            )


if __name__ == "__main__":
    main()
