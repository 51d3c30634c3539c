"""qdqopt: move, merge and remove Q/DQ pairs so TensorRT runs a model fully in INT8."""

__version__ = "0.1.0"
