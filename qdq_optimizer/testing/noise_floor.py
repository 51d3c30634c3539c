"""How much an output SQNR moves for reasons that have nothing to do with accuracy.

A model whose activations are quantized coarsely (trained classifiers with per-tensor int8
activations often sit at 4-7 dB SQNR inside) propagates rounding errors non-linearly: which way
the final error moves when one rounding step is removed or changed is close to a coin toss, and on
a few dozen samples of a softmax output a handful of samples near the decision boundary decide
the pooled SQNR. A rule that removes Q/DQ pairs TensorRT would run in float drops rounding steps,
so its measured effect is only meaningful beyond that spread.

The control used here changes nothing anyone would call accuracy: every activation scale (the
scale of a Q/DQ pair on a computed tensor; weight and bias scales stay) is multiplied by a factor
within +-2 %. The spread of the output SQNR over those factors is the noise floor of the
criterion on that model and sample set (issue 10, item 6). ``paired_change`` applies a rewrite
to the model and to each rescaled copy: the mean of its SQNR changes over those realisations
estimates what the rewrite itself costs, which one realisation cannot.

The held-out samples are a second source of spread: the pooled SQNR of softmax probabilities is
decided by the few samples near a decision boundary. ``held_out.sample_noise`` splits the noise by
sample, ``held_out.effective_samples`` says how many samples it effectively rests on (Kish:
(sum e)^2 / sum e^2), and ``bootstrap_delta_ci`` resamples the samples (pairing input and output on each) for a
confidence interval of an SQNR change.

Both take an optional ``metric`` (model -> float, higher is better) in place of the output SQNR:
an entry's task metric (box F1 against the float model) has a noise floor of its own, and on a
detector whose scores sit near the threshold it is far wider than the SQNR's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .held_out import output_sqnr

DEFAULT_FACTORS = (0.98, 0.99, 0.995, 1.005, 1.01, 1.02)


def activation_scale_names(model: onnx.ModelProto) -> set[str]:
    """Names of the scale tensors of Q/DQ pairs on computed (non-constant) tensors that no
    weight or bias Q/DQ shares (rescaling a shared one would change a weight too)."""
    g = model.graph
    consts = {i.name for i in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output
    }
    producer = {o: n for n in g.node for o in n.output}
    act: set[str] = set()
    other: set[str] = set()
    for n in g.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 1:
            (other if n.input[0] in consts else act).add(n.input[1])
        elif n.op_type == "DequantizeLinear" and len(n.input) > 1:
            q = producer.get(n.input[0])
            computed = q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in consts
            (act if computed else other).add(n.input[1])
    return act - other


def rescale_activation_scales(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """A copy of ``model`` whose activation Q/DQ scales are multiplied by ``factor`` (scale
    initializers and Constant nodes; each shared scale once, so Q and DQ stay a pair)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = activation_scale_names(out)

    def scaled(t: onnx.TensorProto) -> onnx.TensorProto:
        a = numpy_helper.to_array(t)
        return numpy_helper.from_array(np.asarray(a * factor, dtype=a.dtype), t.name)

    for init in out.graph.initializer:
        if init.name in names:
            init.CopyFrom(scaled(init))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in names:
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.CopyFrom(scaled(attr.t))
    return out


@dataclass
class NoiseFloor:
    """Output SQNR (dB) of a model against its float reference, and its shift under each
    activation-scale factor."""

    sqnr_db: float
    shifts_db: dict[float, float]

    @property
    def spread_db(self) -> float:
        """Largest minus smallest SQNR over the model and its rescaled copies."""
        values = [0.0, *self.shifts_db.values()]
        return max(values) - min(values)

    @property
    def worst_shift_db(self) -> float:
        """The largest loss a rescaled copy shows (<= 0)."""
        return min([0.0, *self.shifts_db.values()])


Metric = Callable[[onnx.ModelProto], float]


def _sqnr_metric(reference: Path, inputs: Path) -> Metric:
    return lambda m: output_sqnr(m, Path(reference), Path(inputs))


def noise_floor(
    model: onnx.ModelProto | Path,
    reference: Path,
    inputs: Path,
    factors: Iterable[float] = DEFAULT_FACTORS,
    metric: Metric | None = None,
) -> NoiseFloor:
    """Measure the model's output SQNR against ``reference`` on ``inputs`` (or ``metric`` of the
    model) and how far it moves when every activation scale is multiplied by each of
    ``factors``. With a ``metric`` the ``*_db`` fields are in its units."""
    score = metric or _sqnr_metric(reference, inputs)
    m = onnx.load(str(model)) if isinstance(model, str | Path) else model
    base = score(m)
    shifts = {f: score(rescale_activation_scales(m, f)) - base for f in factors}
    return NoiseFloor(base, shifts)


@dataclass
class PairedChange:
    """SQNR (dB) change a rewrite makes, measured on the model and on each rescaled copy (the
    same rewrite, another rounding realisation): its mean estimates the rewrite's own cost.
    ``before_db`` is each realisation's own SQNR (how lucky the given model's rounding is)."""

    changes_db: dict[float, float]
    before_db: dict[float, float] = field(default_factory=dict)

    @property
    def mean_db(self) -> float:
        return float(np.mean(list(self.changes_db.values())))

    @property
    def se_db(self) -> float:
        """Standard error of ``mean_db`` over the realisations (nan for fewer than two)."""
        v = list(self.changes_db.values())
        return float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")

    def rank_of(self, factor: float = 1.0) -> int:
        """1 + how many realisations have a higher SQNR before the rewrite than ``factor``'s
        (1: the given model is the luckiest rounding of them all)."""
        ref = self.before_db[factor]
        return 1 + sum(1 for v in self.before_db.values() if v > ref)


def paired_change(
    model: onnx.ModelProto | Path,
    rewrite: Callable[[onnx.ModelProto], onnx.ModelProto],
    reference: Path,
    inputs: Path,
    factors: Iterable[float] = (1.0, *DEFAULT_FACTORS),
    metric: Metric | None = None,
) -> PairedChange:
    """``sqnr(rewrite(m_f)) - sqnr(m_f)`` (or ``metric``'s change) for ``m_f`` = the model with
    activation scales times each factor (1.0: the model itself)."""
    score = metric or _sqnr_metric(reference, inputs)
    m = onnx.load(str(model)) if isinstance(model, str | Path) else model
    changes, befores = {}, {}
    for f in factors:
        mf = rescale_activation_scales(m, f)
        befores[f] = score(mf)
        changes[f] = score(rewrite(mf)) - befores[f]
    return PairedChange(changes, befores)


def bootstrap_delta_ci(
    noise_before: np.ndarray,
    noise_after: np.ndarray,
    *,
    draws: int = 4000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of SQNR(after) - SQNR(before) (dB) over the samples, from
    the per-sample noise of each (``held_out.sample_noise``; the signal cancels in the change): each draw
    resamples the samples with replacement, the same ones for both (a paired change)."""
    a, b = (np.asarray(v, dtype=np.float64) for v in (noise_before, noise_after))
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"per-sample noise of shapes {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(draws, len(a)))
    with np.errstate(divide="ignore", invalid="ignore"):
        deltas = 10 * np.log10(a[idx].sum(axis=1) / b[idx].sum(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return float(low), float(high)
