"""Run two models under ONNX Runtime on the same inputs and compare their outputs.

The sessions come from ``runtime`` (graph optimizations off, so the comparison measures the models
as written).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import InputError
from .runtime import ModelLike, random_inputs, run, run_session, session


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    max_abs_diff: float
    sqnr_db: float  # of ``test`` against ``reference``; inf when identical

    def to_dict(self) -> dict:
        d = asdict(self)
        if math.isinf(self.sqnr_db):
            d["sqnr_db"] = "inf"
        return d


def sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - test)^2).

    inf when the arrays are equal; -inf when the reference is all zero but the test is not."""
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise ValueError(f"shape mismatch: {ref.shape} vs {tst.shape}")
    noise = float(np.sum((ref - tst) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _reference_run(
    reference: ModelLike, feeds: dict[str, np.ndarray] | None, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The feeds (seeded random ones made from the reference's inputs when None) and the
    reference's outputs, from one session that is gone before the next model loads (a big
    model's weights are held once at a time)."""
    sess = session(reference)
    if feeds is None:
        feeds = random_inputs(sess, seed)
    return feeds, run_session(sess, feeds, seed)


def compare(
    reference: ModelLike,
    test: ModelLike,
    feeds: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> list[OutputComparison]:
    """Run both models on the same inputs; per shared output: max |diff| and SQNR of test."""
    feeds, ref_out = _reference_run(reference, feeds, seed)
    test_out = run(test, feeds)
    result = []
    for name, r in ref_out.items():
        if name not in test_out:
            continue
        t = test_out[name]
        if r.shape != t.shape:
            raise InputError(f"output '{name}' changed shape: {list(r.shape)} -> {list(t.shape)}")
        diff = np.abs(r.astype(np.float64) - t.astype(np.float64))
        result.append(
            OutputComparison(
                name, list(r.shape), float(diff.max()) if diff.size else 0.0, sqnr(r, t)
            )
        )
    return result


def against_reference(
    reference: ModelLike,
    models: dict[str, ModelLike],
    feeds: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> list[dict]:
    """SQNR (dB) of each model's outputs against a float reference model on the same inputs:
    ``[{"name": output, "sqnr_db": {label: value}}]``. Used by ``optimize --verify
    --reference FLOAT.onnx`` to show whether the rewrite lost fidelity against the float model."""
    feeds, ref_out = _reference_run(reference, feeds, seed)
    outs = {label: run(m, feeds) for label, m in models.items()}
    rows = []
    for name, r in ref_out.items():
        values = {}
        for label, o in outs.items():
            if name in o and o[name].shape == r.shape:
                values[label] = sqnr(r, o[name])
        rows.append({"name": name, "sqnr_db": values})
    return rows
