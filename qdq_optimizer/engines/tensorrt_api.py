"""The one module that imports TensorRT: build an engine from ONNX, read a ``.plan``'s layer report.

TensorRT is optional (extra ``trt``) and needs a GPU, so everything that touches it sits
behind the small ``EngineBuilder`` interface: tests inject a fake builder, and without
TensorRT every entry point fails with a MissingDependencyError that says how to get the same
JSON from trtexec instead. ``engines.build`` writes the files; ``engines.layer_report`` reads
``.plan`` files through ``read_plan_json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import InputError, MissingDependencyError, UsageError


def default_report_path(engine_path: str | os.PathLike) -> Path:
    """OUT.plan -> OUT.graph.json beside it (trtexec/TREx naming)."""
    p = Path(engine_path)
    return p.with_name(p.stem + ".graph.json")


def trtexec_hint(
    onnx_path: str | os.PathLike | None = None,
    *,
    engine_path: str | os.PathLike | None = None,
    report_path: str | os.PathLike | None = None,
) -> str:
    """How to get the same layer report from trtexec, naming the user's files when known: the
    report (and profile) go where ``qdqopt build`` would have put them, else beside the model."""
    model = str(onnx_path) if onnx_path is not None else "MODEL.onnx"
    if report_path is not None:
        report = Path(report_path)
    elif engine_path is not None:
        report = default_report_path(engine_path)
    else:
        report = Path(model).with_suffix(".graph.json")
    stem = report.name.removesuffix(".graph.json").removesuffix(".json")
    profile = report.with_name(stem + ".profile.json")
    engine = f" --saveEngine={engine_path}" if engine_path is not None else ""
    return (
        f"produce the layer report with trtexec instead: trtexec --onnx={model}{engine} --int8 "
        f"--profilingVerbosity=detailed --exportLayerInfo={report} "
        f"--exportProfile={profile} (TensorRT 11 has no --int8 flag: drop it there, "
        "the Q/DQ nodes alone make the engine INT8)"
    )


@dataclass
class BuildResult:
    engine: bytes  # the serialized engine (.plan)
    layer_info: str  # engine inspector JSON at detailed verbosity


class EngineBuilder(Protocol):
    """Anything that turns an ONNX file into an engine and its layer report."""

    def build(self, onnx_path: Path, *, fp16: bool) -> BuildResult: ...


def import_tensorrt(purpose: str, hint: str | None = None) -> Any:
    """The tensorrt module, or a MissingDependencyError naming the trtexec alternative."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise MissingDependencyError(
            f"{purpose} needs the tensorrt Python package and an NVIDIA GPU "
            f"(pip install 'qdqopt[trt]'); or {hint or trtexec_hint()}"
        ) from None
    return trt


def _start(factory: Any, *args: Any, onnx_path: str | os.PathLike | None = None) -> Any:
    """trt.Builder / trt.Runtime, which fail (nullptr factory, CUDA init) without a usable GPU."""
    try:
        obj = factory(*args)
    except Exception as exc:  # noqa: BLE001 - pybind11 raises TypeError/RuntimeError here
        obj, detail = None, f"{type(exc).__name__}: {exc}"
    else:
        detail = "it returned nothing"
    if obj is None:
        raise MissingDependencyError(
            f"TensorRT could not start ({' '.join(detail.split())[:120]}): a CUDA GPU and driver "
            f"are needed; or {trtexec_hint(onnx_path)}"
        )
    return obj


def _major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def _inspector_json(trt: Any, engine: Any) -> str:
    """The engine inspector's JSON, with dynamic input shapes bound so formats are known."""
    inspector = engine.create_engine_inspector()
    try:
        context = engine.create_execution_context()
        for i in range(getattr(engine, "num_io_tensors", 0)):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            shape = list(engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                opt = engine.get_tensor_profile_shape(name, 0)[1]
                context.set_input_shape(name, list(opt))
        inspector.execution_context = context
    except Exception:  # noqa: BLE001 - formats then read "N/A due to dynamic shapes", still useful
        pass
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


class TensorRTBuilder:
    """The real builder: ONNX parser, detailed profiling verbosity, Q/DQ (explicit) INT8."""

    def __init__(self, workspace_mib: int = 4096) -> None:
        self.workspace_mib = workspace_mib

    def build(self, onnx_path: Path, *, fp16: bool) -> BuildResult:
        trt = import_tensorrt("qdqopt build", trtexec_hint(onnx_path))
        logger = trt.Logger(trt.Logger.WARNING)
        builder = _start(trt.Builder, logger, onnx_path=onnx_path)
        flags = 0
        ncf = trt.NetworkDefinitionCreationFlag
        if _major(trt) < 10:
            flags |= 1 << int(ncf.EXPLICIT_BATCH)
        if not hasattr(trt.BuilderFlag, "INT8") and hasattr(ncf, "STRONGLY_TYPED"):
            flags |= 1 << int(ncf.STRONGLY_TYPED)  # TensorRT 11: types come from the graph
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise InputError(
                f"{onnx_path}: TensorRT's ONNX parser failed: {errs[0] if errs else '?'}"
            )
        config = builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mib << 20)
        if hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)
        if fp16:
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise UsageError(
                    f"TensorRT {trt.__version__} has no FP16 builder flag: cast the float parts "
                    "of the ONNX model to FP16 instead of passing --fp16"
                )
            config.set_flag(trt.BuilderFlag.FP16)
        profile = None
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            if any(d < 0 for d in shape):
                profile = profile or builder.create_optimization_profile()
                fixed = [1 if d < 0 else d for d in shape]  # dynamic dims built at 1
                profile.set_shape(tensor.name, fixed, fixed, fixed)
        if profile is not None:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise InputError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
        engine_bytes = bytes(serialized)
        runtime = _start(trt.Runtime, logger, onnx_path=onnx_path)
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        return BuildResult(engine=engine_bytes, layer_info=_inspector_json(trt, engine))


def read_plan_json(path: str | os.PathLike) -> str:
    """The layer report of a serialized engine, through TensorRT's engine inspector."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"engine not found: {p}")
    source = p.with_suffix(".onnx")  # the model the plan was presumably built from
    trt = import_tensorrt(f"reading {p.name}", trtexec_hint(source))
    logger = trt.Logger(trt.Logger.ERROR)
    runtime = _start(trt.Runtime, logger, onnx_path=source)
    engine = runtime.deserialize_cuda_engine(p.read_bytes())
    if engine is None:
        raise InputError(
            f"{p}: TensorRT {trt.__version__} cannot deserialize this engine (built by another "
            f"TensorRT version or for another GPU?); or {trtexec_hint(source)}"
        )
    return _inspector_json(trt, engine)
