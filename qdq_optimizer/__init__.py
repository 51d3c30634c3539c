"""qdqopt: move, merge and remove Q/DQ pairs so TensorRT runs a model fully in INT8."""

__version__ = "0.1.0"

__all__ = ["OptimizeReport", "Problem", "lint", "optimize"]


def __getattr__(name: str):
    """Lazy exports: ``import qdq_optimizer`` stays cheap (no onnx-graphsurgeon import)."""
    if name in ("optimize", "lint"):
        from . import api

        return getattr(api, name)
    if name in ("OptimizeReport", "Problem"):
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module 'qdq_optimizer' has no attribute {name!r}")
