"""Automatic Q/DQ insertion: swap float layers for pytorch-quantization modules.

Inputs get a per-tensor histogram calibrator (amax chosen later by mse/percentile/entropy/max),
weights a per-channel max quantizer (axis 0; axis 1 for ConvTranspose, as TensorRT expects).
Conv+BN and RepConv are fused first (``model.fuse()``) so no Q/DQ sits between a conv and its BN.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from pytorch_quantization import nn as quant_nn
from pytorch_quantization.tensor_quant import QuantDescriptor
from torch import nn

from qdq_optimizer.errors import UsageError

log = logging.getLogger("qdqopt.trainer")

# float class -> quant class, checked in this order (subclasses first is irrelevant: exact types).
_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: quant_nn.QuantConv2d,
    nn.ConvTranspose2d: quant_nn.QuantConvTranspose2d,
    nn.Linear: quant_nn.QuantLinear,
}
QUANT_TYPES = tuple(_SWAPS.values())


def input_descriptor(calib: str = "histogram") -> QuantDescriptor:
    """Per-tensor int8 activation quantizer (zero point 0, scale = amax/127)."""
    return QuantDescriptor(num_bits=8, calib_method=calib)


def weight_descriptor(axis: int | None) -> QuantDescriptor:
    """Per-channel int8 weight quantizer with a max calibrator."""
    return QuantDescriptor(num_bits=8, axis=axis, calib_method="max")


@dataclass
class InsertReport:
    """What :func:`insert_quantizers` did: quantized and ignored module paths, dead regexes."""

    quantized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unmatched_patterns: list[str] = field(default_factory=list)


def compile_policy(ignore_policy: str | list[str] | None) -> list[re.Pattern[str]]:
    """Compile ignore regexes (each must match a whole module path, like the seed's policy)."""
    if not ignore_policy:
        return []
    patterns = [ignore_policy] if isinstance(ignore_policy, str) else list(ignore_policy)
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise UsageError(f"--ignore-policy: bad regex {p!r}: {exc}") from None
    return compiled


def fuse_model(model: nn.Module) -> nn.Module:
    """Fold Conv+BN / RepConv with the model's own ``fuse()`` when it has one (seed step 1)."""
    fuse = getattr(model, "fuse", None)
    if callable(fuse):
        out = fuse()
        if isinstance(out, nn.Module):
            model = out
    return model


def _weight_axis(module: nn.Module) -> int | None:
    if isinstance(module, nn.ConvTranspose2d):
        # weight is [Cin, Cout/groups, kh, kw]: per output channel is axis 1 only when groups == 1
        return 1 if module.groups == 1 else None
    return 0


def to_quant_module(module: nn.Module, calib: str = "histogram") -> nn.Module:
    """A quant module sharing ``module``'s parameters (no copy), with fresh quantizers."""
    quant_cls = _SWAPS[type(module)]
    qm = quant_cls.__new__(quant_cls)
    qm.__dict__.update(module.__dict__)  # parameters, buffers, hooks, hyper-parameters
    qm._modules = dict(module._modules)
    qm._fake_quant = True
    qm._input_quantizer = quant_nn.TensorQuantizer(input_descriptor(calib))
    qm._weight_quantizer = quant_nn.TensorQuantizer(weight_descriptor(_weight_axis(module)))
    return qm


def _set_child(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, new)


def insert_quantizers(
    model: nn.Module,
    ignore_policy: str | list[str] | None = None,
    calib: str = "histogram",
) -> InsertReport:
    """Replace Conv2d/ConvTranspose2d/Linear in place; skip paths that fully match a regex.

    A regex that matches no quantizable module is reported (and logged as a warning): it is
    almost always a typo, and silently quantizing the layer the user meant to keep is worse.
    """
    patterns = compile_policy(ignore_policy)
    hits = {p.pattern: 0 for p in patterns}
    report = InsertReport()
    targets = [(n, m) for n, m in model.named_modules() if type(m) in _SWAPS and n]
    for name, module in targets:
        matched = [p for p in patterns if p.match(name)]  # re.match, as the seed
        for p in matched:
            hits[p.pattern] += 1
        if matched:
            report.ignored.append(name)
            continue
        _set_child(model, name, to_quant_module(module, calib))
        report.quantized.append(name)
    report.unmatched_patterns = [p for p, n in hits.items() if n == 0]
    for p in report.unmatched_patterns:
        log.warning("--ignore-policy %r matches no quantizable module", p)
    return report


def iter_quantizers(model: nn.Module, inputs_only: bool = False):
    """(path, TensorQuantizer) for every quantizer; a shared quantizer appears once."""
    for name, m in model.named_modules():
        if isinstance(m, quant_nn.TensorQuantizer):
            if inputs_only and (m.axis is not None or name.endswith("_weight_quantizer")):
                continue
            yield name, m


def quantizers_under(module: nn.Module) -> list[quant_nn.TensorQuantizer]:
    """All quantizers inside ``module`` (used to switch a layer to float for sensitivity)."""
    return [m for m in module.modules() if isinstance(m, quant_nn.TensorQuantizer)]


def set_quant_enabled(model: nn.Module, enabled: bool) -> None:
    """Enable or bypass every quantizer (float behaviour when disabled)."""
    for m in model.modules():
        if isinstance(m, quant_nn.TensorQuantizer):
            (m.enable if enabled else m.disable)()


def amax_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every quantizer's amax by module path, including every alias of a shared quantizer."""
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, quant_nn.TensorQuantizer) and m.amax is not None:
            out[name] = m.amax.detach().cpu().clone()
    return out
