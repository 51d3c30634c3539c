"""The PyTorch half of qdqopt: built-in YOLOv7 detectors, data, training, evaluation, checkpoints.

Submodules are imported explicitly (``trainer.models``, ``trainer.data``, ``trainer.evaluate``,
``trainer.checkpoint``, ``trainer.nms``, ``trainer.train``) so that importing ``trainer`` stays cheap.
"""
