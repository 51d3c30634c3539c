"""Tie quantizers that TensorRT needs to share one scale, as decided by the optimizer.

The model is exported once to a temporary ONNX in which every per-tensor quantizer carries a
unique amax; each QuantizeLinear's scale therefore names the quantizer it came from (robust to
exporter naming). ``qdq_optimizer.api.quantizer_groups`` returns the Q nodes that must
share a scale; the matching quantizers are merged with union-find and each group is replaced by
one ``TensorQuantizer`` object, so PTQ calibrates one histogram per group and QAT trains against
exactly the scales TensorRT will use.

Residual Adds (yolov5/yolov8 Bottleneck) get a quantizer on the skip input, as the residual rule
places it: TensorRT then fuses the Add into the branch conv as an INT8 epilogue.
"""

from __future__ import annotations

import copy
import functools
import io
import logging
from collections import defaultdict

import numpy as np
import onnx
import torch
from networkx.utils import UnionFind
from pytorch_quantization import nn as quant_nn
from torch import nn

from qdq_optimizer.api import quantizer_groups
from qdq_optimizer.protos import qdq_param_values

from .insert import input_descriptor, iter_quantizers

log = logging.getLogger("qdqopt.trainer")


# ---------------------------------------------------------------------------------------------
# residual Adds
class ResidualAdd(nn.Module):
    """``skip + branch`` with an optional quantizer on the skip input (the Python API hook).

    Use it in your own blocks instead of ``x + f(x)``::

        self.add = ResidualAdd()
        ...
        return self.add(x, self.cv2(self.cv1(x)))   # skip first, conv branch second

    :func:`quantize_residuals` then gives it a ``_skip_quantizer``.
    """

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        q = getattr(self, "_skip_quantizer", None)
        return (q(skip) if q is not None else skip) + branch


def _bottleneck_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = self.cv2(self.cv1(x))
    return self._skip_quantizer(x) + y if self.add else y


def is_bottleneck(module: nn.Module) -> bool:
    """yolov5/yolov8 ``Bottleneck``: children ``cv1``/``cv2`` and a boolean ``add`` (x + cv2(cv1(x)))."""
    return (
        isinstance(getattr(module, "add", None), bool)
        and isinstance(getattr(module, "cv1", None), nn.Module)
        and isinstance(getattr(module, "cv2", None), nn.Module)
    )


def quantize_residuals(model: nn.Module, calib: str = "histogram") -> list[str]:
    """Give every residual Add a skip-input quantizer; return the paths of the new quantizers."""
    added = []
    for name, m in list(model.named_modules()):
        if isinstance(m, ResidualAdd) and not hasattr(m, "_skip_quantizer"):
            m._skip_quantizer = quant_nn.TensorQuantizer(input_descriptor(calib))
        elif is_bottleneck(m) and m.add and not hasattr(m, "_skip_quantizer"):
            m._skip_quantizer = quant_nn.TensorQuantizer(input_descriptor(calib))
            # a partial (not a bound method) so the model pickles to spawned workers
            m.forward = functools.partial(_bottleneck_forward, m)
        else:
            continue
        added.append(f"{name}._skip_quantizer" if name else "_skip_quantizer")
    return added


# ---------------------------------------------------------------------------------------------
# scale groups from the optimizer
def _unique_amax(n: int) -> list[float]:
    # exact binary fractions, spaced far apart relative to float32 precision
    return [float(np.float32(1.0 + k / 64.0)) for k in range(n)]


def _scale_key(value: float) -> float:
    return float(np.float32(value))


def tagged_export(
    model: nn.Module, example: torch.Tensor, opset: int = 13
) -> tuple[onnx.ModelProto, dict[float, str]]:
    """Export a copy whose per-tensor quantizers carry unique amax; map Q scale -> quantizer path."""
    from .export import export_model  # local: export imports this module's types lazily too

    work = copy.deepcopy(model).cpu().eval()
    tags: dict[float, str] = {}
    named = list(iter_quantizers(work))
    values = iter(_unique_amax(len(named)))
    for name, q in named:
        if q.axis is None:
            a = next(values)
            q.register_buffer("_amax", torch.tensor(a))
            key = _scale_key(float(np.float32(a)) / 127.0)
            if key in tags:
                raise RuntimeError("scale tags collide; report this as a bug")
            tags[key] = name
        else:  # per-channel weights: any positive amax of the right shape
            owner = work.get_submodule(name.rsplit(".", 1)[0])
            w = owner.weight
            axes = [q.axis] if isinstance(q.axis, int) else list(q.axis)
            shape = [w.shape[d] if d in axes else 1 for d in range(w.dim())]
            q.register_buffer("_amax", torch.ones(shape))
        q.enable_quant()
        q.disable_calib()
        q.enable()
    buf = io.BytesIO()
    export_model(work, buf, example.cpu(), opset=opset)
    return onnx.load_from_string(buf.getvalue()), tags


def q_node_owners(onnx_model: onnx.ModelProto, tags: dict[float, str]) -> dict[str, str]:
    """QuantizeLinear node name -> quantizer path, read from each node's (scalar) scale."""
    consts, _ = qdq_param_values(onnx_model)
    owners = {}
    for node in onnx_model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        scale = consts.get(node.input[1])
        if scale is None or scale.size != 1:
            continue
        path = tags.get(_scale_key(float(scale.reshape(-1)[0])))
        if path is not None:
            owners[node.name] = path
    return owners


def same_input_groups(onnx_model: onnx.ModelProto) -> list[list[str]]:
    """Q nodes that quantize the same tensor (e.g. a conv input and a residual skip)."""
    by_input: dict[str, list[str]] = defaultdict(list)
    for node in onnx_model.graph.node:
        if node.op_type == "QuantizeLinear":
            by_input[node.input[0]].append(node.name)
    return [g for g in by_input.values() if len(g) > 1]


def tie_quantizers(model: nn.Module, groups: list[list[str]]) -> list[list[str]]:
    """Make each group of quantizer paths one shared ``TensorQuantizer`` (union-find merge).

    Returns the merged groups (paths in model order, first = the object kept), which is what a
    checkpoint stores to rebuild the same sharing.
    """
    order = {name: i for i, (name, _) in enumerate(iter_quantizers(model))}
    alias = {
        n: n
        for n, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, quant_nn.TensorQuantizer)
    }
    uf = UnionFind()
    for g in groups:
        members = [p for p in g if p in alias]
        if len(members) > 1:
            uf.union(*members)
    merged = []
    for s in uf.to_sets():
        members = sorted(s, key=lambda p: (order.get(p, len(order)), p))
        if len(members) < 2:
            continue
        keep = model.get_submodule(members[0])
        for p in members[1:]:
            parent, _, leaf = p.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, keep)
        merged.append(members)
    merged.sort(key=lambda g: order.get(g[0], 0))
    return merged


def share_scales(
    model: nn.Module, example: torch.Tensor, rules: str | None = None
) -> list[list[str]]:
    """Export, ask the optimizer for scale groups, tie the quantizers; return the groups."""
    onnx_model, tags = tagged_export(model, example)
    owners = q_node_owners(onnx_model, tags)
    groups = quantizer_groups(onnx_model, rules=rules) + same_input_groups(onnx_model)
    path_groups = []
    for g in groups:
        paths = sorted({owners[n] for n in g if n in owners})
        unknown = [n for n in g if n not in owners]
        if unknown:
            log.debug("scale group has Q nodes without a quantizer: %s", unknown)
        if any(p.endswith("_weight_quantizer") for p in paths):
            continue  # weights are per-channel; never share them
        if len(paths) > 1:
            path_groups.append(paths)
    return tie_quantizers(model, path_groups)
