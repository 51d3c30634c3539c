"""ONNX Runtime, the one place qdqopt runs models: sessions and running them on samples.

Sessions run on the CPU provider with graph optimizations off, so a model is measured as written
(ONNX Runtime's QDQ fusions would change rounding in one model and not another), in priority order
without the CPU arena (a big model's dequantized weights are not all held at once), and models over
protobuf's 2 GiB are read from a temporary copy with external data. Sample files (``.npz``) are
split here into one feed per run. Used by ``verify`` (output comparison) and ``calibration``
(activation ranges); the rules never run a model.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import model_io
from .errors import InputError

ModelLike = onnx.ModelProto | str | os.PathLike

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def session(model: ModelLike):
    """An ONNX Runtime CPU session with graph optimizations disabled."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    # Weight DQs have no inputs to wait for: in ONNX Runtime's default order they all run first,
    # holding every dequantized weight at once (11 GB for a 2.3 GB int8 model); priority order
    # runs each next to its consumer. Without the arena a second run does not grow memory again.
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.enable_cpu_mem_arena = False
    # idle pool threads spin by default, burning CPU after each run that the rules' own CPU
    # time then shows (and a 2-core machine's other work loses): these sessions check, not serve
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def open_session(src):
        try:
            return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise InputError(
                f"ONNX Runtime cannot load the model: {' '.join(str(exc).split())[:300]}"
            ) from None

    if not isinstance(model, onnx.ModelProto):
        return open_session(os.fspath(model))
    if model_io.model_size(model) < model_io.PROTO_LIMIT:
        return open_session(model.SerializeToString())
    # over protobuf's 2 GiB: ONNX Runtime reads it from a copy with external data (written by
    # model_io without touching ``model``); the session holds the weights once created
    with tempfile.TemporaryDirectory(prefix="qdqopt-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        model_io.save_model(model, path, external_data=True)
        return open_session(os.fspath(path))


def random_inputs(sess, seed: int = 0, dynamic_dim: int = 32) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: floats uniform in [0, 1) (image-like), integers in
    [0, 10). Dynamic dimensions become 1 for the first axis (batch) and ``dynamic_dim`` elsewhere."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        shape = [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 else dynamic_dim)
            for i, d in enumerate(inp.shape)
        ]
        dtype = _NP_TYPES.get(inp.type)
        if dtype is None:
            raise InputError(
                f"cannot make random data for input '{inp.name}' of type {inp.type}; pass --inputs"
            )
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.5
        else:
            feeds[inp.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file keyed by graph input name (see ``feed_batches``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"inputs file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read inputs file {p}: {exc}") from None


@dataclass
class InputSpec:
    """A graph input as ONNX Runtime describes it (``NodeArg``: name, type string, shape)."""

    name: str
    type: str
    shape: list


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs (initializers excluded) of a model, without an ONNX Runtime session."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else None
        type_name = next((k for k, v in _NP_TYPES.items() if v == dtype), "tensor(unknown)")
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        ]
        specs.append(InputSpec(vi.name, type_name, dims))
    return specs


def feed_batches(
    sess, data: dict[str, np.ndarray], dynamic_batch: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Split sample arrays into one feed per run (``sess``: an ONNX Runtime session, or the
    ``model_inputs`` of a model).

    Each graph input's array has the input's rank; its first axis holds samples. A static batch
    size ``b`` takes them ``b`` at a time (the count must be a multiple of ``b``); a dynamic one
    takes ``dynamic_batch`` at a time (all at once when None). Integer arrays for a float input are
    8-bit images: they are scaled by 1/255 (so a data set can be stored as uint8).
    """
    inputs = sess.get_inputs() if hasattr(sess, "get_inputs") else sess
    missing = [i.name for i in inputs if i.name not in data]
    if missing:
        raise InputError(f"inputs file lacks graph input(s): {', '.join(missing)}")
    runs: dict[str, list[np.ndarray]] = {}
    scalars: dict[str, np.ndarray] = {}
    for inp in inputs:
        arr = _as_input(inp, np.asarray(data[inp.name]))
        shape = list(inp.shape)
        if arr.ndim != len(shape):
            raise InputError(
                f"inputs for '{inp.name}' have rank {arr.ndim}; the model takes rank {len(shape)}"
            )
        fixed = [(k, d) for k, d in enumerate(shape) if k and isinstance(d, int) and d > 0]
        if any(arr.shape[k] != d for k, d in fixed):
            want = ["?" if not isinstance(d, int) or d <= 0 else d for d in shape[1:]]
            raise InputError(
                f"inputs for '{inp.name}' have samples of shape {list(arr.shape[1:])}; "
                f"the model takes {want}"
            )
        if arr.ndim == 0:  # a scalar input: the same value in every run
            scalars[inp.name] = arr
            continue
        n = arr.shape[0]
        b = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        step = b or dynamic_batch or n
        if n == 0 or n % step:
            raise InputError(
                f"inputs for '{inp.name}': {n} sample(s) cannot be fed in batches of {step}"
            )
        runs[inp.name] = [arr[i : i + step] for i in range(0, n, step)]
    counts = {len(v) for v in runs.values()}
    if len(counts) > 1:
        raise InputError("inputs file: the graph inputs hold different numbers of batches")
    n_runs = counts.pop() if counts else 1
    return [{**scalars, **{k: v[i] for k, v in runs.items()}} for i in range(n_runs)]


def _as_input(inp, arr: np.ndarray) -> np.ndarray:
    """Check and convert one input's samples: numeric, finite, integer images scaled for floats."""
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"inputs for '{inp.name}' have dtype {arr.dtype}, not numbers")
    dtype = _NP_TYPES.get(inp.type)
    if dtype is None:
        return arr
    if np.issubdtype(dtype, np.floating):
        if np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float32) / np.float32(255)
        arr = arr.astype(dtype, copy=False)
        if not np.isfinite(arr).all():
            raise InputError(f"inputs for '{inp.name}' contain NaN or infinite values")
    elif arr.dtype != dtype:
        if np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"inputs for '{inp.name}' are {arr.dtype}; the model takes {inp.type}")
        if np.issubdtype(dtype, np.integer) and arr.size:
            info = np.iinfo(dtype)  # a cast would wrap values silently (uint8 200 -> int8 -56)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise InputError(
                    f"inputs for '{inp.name}' hold {arr.dtype} values {lo}..{hi}, outside "
                    f"{inp.type}; give the values the model takes (an int8 graph input, as "
                    "ModelOpt's --direct_io_types writes, reads the quantized image)"
                )
        arr = arr.astype(dtype)
    return arr


def run(
    model: ModelLike, feeds: dict[str, np.ndarray] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` by name on ``feeds`` (seeded random inputs when None); feeds that
    hold several batches run batch by batch, outputs joined along the first axis."""
    return run_session(session(model), feeds, seed)


def run_session(sess, feeds: dict[str, np.ndarray] | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Outputs of an open session by name (see ``run``)."""
    batches = [random_inputs(sess, seed)] if feeds is None else feed_batches(sess, feeds)
    names = [o.name for o in sess.get_outputs()]
    outs = [sess.run(names, f) for f in batches]
    if len(outs) == 1:
        return dict(zip(names, outs[0], strict=True))
    return {
        n: np.concatenate([o[i] if o[i].ndim else o[i][None] for o in outs])
        for i, n in enumerate(names)
    }
