"""A model scored on held-out samples against its float reference: the pooled output SQNR the
corpus criterion judges, the error per sample behind it, and how many samples that error rests on.

One home for both the criterion (``corpus``) and its noise controls (``noise_floor``): the models
run as written (``qdq_optimizer.runtime``, ONNX Runtime's graph optimizations off), every output
together, each output's first axis the sample. Outputs of model files are cached per process
(the float references and sample sets are shared by many corpus entries).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx


def _outputs(model: onnx.ModelProto | str, inputs: str) -> tuple[np.ndarray, ...]:
    from ..runtime import load_inputs, run

    outs = run(model, load_inputs(inputs))
    return tuple(outs[k] for k in sorted(outs))


@lru_cache(maxsize=64)
def _file_outputs(path: str, inputs: str, _stamp: tuple) -> tuple[np.ndarray, ...]:
    return _outputs(path, inputs)


def model_outputs(model: onnx.ModelProto | Path, inputs: Path) -> tuple[np.ndarray, ...]:
    """Every output of ``model`` (a file: cached while neither file changes; a proto: run) on
    the samples, in output-name order."""
    if isinstance(model, str | Path):
        files = (Path(model), Path(inputs))
        stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        return _file_outputs(str(model), str(inputs), stamp)
    return _outputs(model, str(inputs))


def output_sqnr(model: onnx.ModelProto | Path, reference: Path, inputs: Path) -> float:
    """SQNR (dB) of all of ``model``'s outputs together against the float reference's."""
    from ..verify import sqnr

    ref, test = model_outputs(Path(reference), inputs), model_outputs(model, inputs)
    if len(ref) != len(test):
        raise ValueError(f"{len(test)} outputs, the reference has {len(ref)}")
    return sqnr(
        np.concatenate([r.astype(np.float64).ravel() for r in ref]),
        np.concatenate([t.astype(np.float64).ravel() for t in test]),
    )


def sample_noise(reference: Iterable[np.ndarray], test: Iterable[np.ndarray]) -> np.ndarray:
    """Squared error per sample against the reference, summed over every output (each output's
    first axis is the sample): shape (N,). The pooled SQNR is 10 log10(signal / its sum)."""
    ref, tst = list(reference), list(test)
    if len(ref) != len(tst) or not ref:
        raise ValueError(f"{len(tst)} outputs, the reference has {len(ref)}")
    n = ref[0].shape[0]
    noise = np.zeros(n)
    for r, t in zip(ref, tst, strict=True):
        if r.shape != t.shape or r.shape[0] != n:
            raise ValueError(f"output shapes {r.shape} and {t.shape}: not {n} samples each")
        r64, t64 = r.astype(np.float64).reshape(n, -1), t.astype(np.float64).reshape(n, -1)
        noise += ((r64 - t64) ** 2).sum(axis=1)
    return noise


def model_sample_noise(model: onnx.ModelProto | Path, reference: Path, inputs: Path) -> np.ndarray:
    """``sample_noise`` of a model (a file or a proto) against its float reference on the
    held-out inputs, run as ``output_sqnr`` runs them."""
    return sample_noise(model_outputs(Path(reference), inputs), model_outputs(model, inputs))


def effective_samples(noise: np.ndarray) -> float:
    """How many samples a pooled error rests on: (sum e)^2 / sum e^2 (Kish); N when every
    sample contributes alike, 1 when one sample holds all of it."""
    e = np.asarray(noise, dtype=np.float64)
    total = float(e.sum())
    return float(total**2 / np.sum(e**2)) if total > 0 else float("nan")
