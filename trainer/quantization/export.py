"""ONNX export of a fake-quant model as QuantizeLinear/DequantizeLinear pairs.

torch 2.13 still ships the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``); with
``TensorQuantizer.use_fb_fake_quant = True`` the quantizers trace to
``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine``, which export as Q/DQ
(scale = amax/127, int8 zero point 0, per-axis weights on axis 0, axis 1 for ConvTranspose).
Scales are exported as Constant nodes; they are moved to initializers here so every ONNX tool
sees plain constants. The dynamo exporter has no symbolic for those ops' per-axis form in this
setup, so it is not used.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator

import onnx
import torch
from pytorch_quantization import nn as quant_nn
from torch import nn

from qdq_optimizer.errors import InputError
from qdq_optimizer.fileio import atomic_path, check_output_path


class _FirstOutput(nn.Module):
    """Detectors return (decoded, raw) in eval mode; export only the decoded tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        while isinstance(y, (tuple, list)):
            y = y[0]
        return y


@contextlib.contextmanager
def fb_fake_quant() -> Iterator[None]:
    """Quantizers trace to torch's native fake-quant ops (exportable as Q/DQ) inside the block."""
    old = quant_nn.TensorQuantizer.use_fb_fake_quant
    quant_nn.TensorQuantizer.use_fb_fake_quant = True
    try:
        yield
    finally:
        quant_nn.TensorQuantizer.use_fb_fake_quant = old


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace top-level ``Constant`` nodes by initializers of the same name."""
    keep = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            t = onnx.TensorProto()
            t.CopyFrom(value)
            t.name = node.output[0]
            model.graph.initializer.append(t)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def export_model(
    model: nn.Module,
    target: str | os.PathLike | io.BytesIO,
    example: torch.Tensor,
    opset: int = 13,
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """Export ``model`` (float or fake-quant) with input ``images`` and output ``outputs``."""
    model = model.cpu().eval()
    dynamic_axes = {"images": {0: "batch"}, "outputs": {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with fb_fake_quant(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # wrap only models that return a tuple, so node/initializer names stay the module paths
        plain = isinstance(model(example.cpu().float()), torch.Tensor)
        torch.onnx.export(
            model if plain else _FirstOutput(model),
            (example.cpu().float(),),
            buf,
            opset_version=opset,
            input_names=["images"],
            output_names=["outputs"],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = constants_to_initializers(onnx.load_from_string(buf.getvalue()))
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if isinstance(target, io.BytesIO):
        target.write(data)
    else:
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return proto


def export_onnx(
    model: nn.Module,
    out: str | os.PathLike,
    img_size: int = 640,
    dynamic_batch: bool = False,
    opset: int = 13,
    channels: int = 3,
) -> onnx.ModelProto:
    """Export a quantized (or float) model to ``out`` atomically; check Q/DQ were produced."""
    out = check_output_path(out)
    example = torch.zeros(1, channels, img_size, img_size)
    proto = export_model(model, io.BytesIO(), example, opset, dynamic_batch)
    has_quant = any(isinstance(m, quant_nn.TensorQuantizer) for m in model.modules())
    if has_quant and not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        raise InputError("export produced no QuantizeLinear: are all quantizers disabled?")
    with atomic_path(out) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return proto
