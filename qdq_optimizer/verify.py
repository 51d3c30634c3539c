"""Run two models under ONNX Runtime on the same inputs and compare their outputs.

The sessions come from ``runtime`` (graph optimizations off, so the comparison measures the models
as written).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .errors import InputError
from .runtime import ModelLike, random_inputs, run_session, session


def json_db(v: float) -> float | str:
    """A dB value as JSON can hold it: ``"inf"`` / ``"-inf"`` for the infinities (identical
    outputs; an all-zero reference), the number otherwise."""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    max_abs_diff: float
    sqnr_db: float  # of ``test`` against ``reference``; inf when identical

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sqnr_db"] = json_db(self.sqnr_db)
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


def run_models(
    models: dict[str, ModelLike], feeds: dict[str, np.ndarray] | None = None, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Each model's outputs by label, all on ``feeds`` (seeded random ones made from the first
    model's inputs when None). Each model runs once, in a session that is gone before the next
    model loads (a big model's weights are held once at a time)."""
    outputs = {}
    for label, model in models.items():
        sess = session(model)
        if feeds is None:
            feeds = random_inputs(sess, seed)
        outputs[label] = run_session(sess, feeds, seed)
        del sess
    return outputs


def output_comparisons(
    ref_out: dict[str, np.ndarray], test_out: dict[str, np.ndarray]
) -> list[OutputComparison]:
    """Per output the two share: max |diff| and SQNR of ``test_out`` against ``ref_out``."""
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


def reference_sqnrs(
    ref_out: dict[str, np.ndarray], outputs: dict[str, dict[str, np.ndarray]]
) -> list[dict]:
    """``[{"name": output, "sqnr_db": {label: value}}]``: each labelled model's SQNR against the
    reference outputs, per reference output (a model without it, or of another shape, is left
    out of that row)."""
    rows = []
    for name, r in ref_out.items():
        values = {
            label: sqnr(r, o[name])
            for label, o in outputs.items()
            if name in o and o[name].shape == r.shape
        }
        rows.append({"name": name, "sqnr_db": values})
    return rows


def compare(
    reference: ModelLike,
    test: ModelLike,
    feeds: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> list[OutputComparison]:
    """Run both models on the same inputs; per shared output: max |diff| and SQNR of test."""
    outs = run_models({"reference": reference, "test": test}, feeds, seed)
    return output_comparisons(outs["reference"], outs["test"])


def against_reference(
    reference: ModelLike,
    models: dict[str, ModelLike],
    feeds: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> list[dict]:
    """SQNR (dB) of each model's outputs against a float reference model on the same inputs
    (``reference_sqnrs``)."""
    outs = run_models({"\0reference": reference, **models}, feeds, seed)
    ref_out = outs.pop("\0reference")
    return reference_sqnrs(ref_out, outs)


def verify_rewrite(
    source: ModelLike,
    result: ModelLike,
    feeds: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    reference: ModelLike | None = None,
) -> list[dict]:
    """What ``optimize --verify`` reports: per output, ``result`` against ``source`` (shape, max
    |diff|, SQNR), and with a float ``reference`` both models' SQNR against it
    (``sqnr_vs_reference_db``: ``{"input": dB, "output": dB}``). Each model runs once."""
    models = {"input": source, "output": result}
    if reference is not None:
        models["reference"] = reference
    return verify_outputs(run_models(models, feeds, seed))


def verify_outputs(outs: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """``verify_rewrite``'s entries from outputs already run, by "input", "output" and,
    optionally, "reference" (e.g. the accuracy guard's, on the same samples)."""
    entries = [c.to_dict() for c in output_comparisons(outs["input"], outs["output"])]
    if "reference" in outs:
        rows = reference_sqnrs(
            outs["reference"], {"input": outs["input"], "output": outs["output"]}
        )
        by_name = {r["name"]: r["sqnr_db"] for r in rows}
        for entry in entries:
            vs = by_name.get(entry["name"], {})
            entry["sqnr_vs_reference_db"] = {k: json_db(v) for k, v in vs.items()}
    return entries
