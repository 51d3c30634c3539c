"""Q/DQ insertion, PTQ calibration, scale sharing, QAT, sensitivity and ONNX export.

pytorch-quantization logs through absl at INFO/WARNING for every quantizer; it is silenced here.
"""

from __future__ import annotations

try:
    from absl import logging as _absl_logging

    _absl_logging.set_verbosity(_absl_logging.ERROR)
except ImportError:  # pragma: no cover - absl comes with pytorch-quantization
    pass
