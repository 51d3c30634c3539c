"""Quantized checkpoints (ptq.pt / qat.pt) that load with ``torch.load(weights_only=True)``.

Only plain types are stored: the float model's config, which modules were quantized, the
residual skip quantizers, the scale groups, the state dict (weights and every amax) and metadata.
Loading rebuilds the float model, re-inserts the same quantizers, re-ties the same groups and
loads the state dict, so no pickle of a class is ever needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from pytorch_quantization import nn as quant_nn
from torch import nn

from qdq_optimizer.errors import InputError
from qdq_optimizer.fileio import atomic_path

from .insert import _SWAPS, amax_state, fuse_model, to_quant_module
from .scale_sharing import quantize_residuals, tie_quantizers

FORMAT = "qdqopt-quantized"
VERSION = 1


def quant_info(model: nn.Module) -> dict:
    """The structure to rebuild: quantized module paths, skip quantizers, groups, disabled ones."""
    quantized = [n for n, m in model.named_modules() if hasattr(m, "_weight_quantizer")]
    residuals = [
        f"{n}._skip_quantizer" if n else "_skip_quantizer"
        for n, m in model.named_modules()
        if isinstance(getattr(m, "_skip_quantizer", None), quant_nn.TensorQuantizer)
    ]
    ids: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, quant_nn.TensorQuantizer):
            ids.setdefault(id(m), []).append(n)
    groups = [paths for paths in ids.values() if len(paths) > 1]
    disabled = sorted(
        n
        for n, m in model.named_modules()
        if isinstance(m, quant_nn.TensorQuantizer) and m._disabled
    )
    return {"quantized": quantized, "residuals": residuals, "groups": groups, "disabled": disabled}


LOADER = "trainer.quantization.quant_checkpoint:rebuild"


def save_quantized(
    model: nn.Module,
    path: str | os.PathLike,
    meta: dict | None = None,
    model_config: dict | None = None,
) -> None:
    """Write a weights_only-loadable quantized checkpoint atomically.

    A built-in detector is saved in trainer.checkpoint's format with ``loader`` naming
    :func:`rebuild`, so ``qdqopt eval``/``export`` and ``trainer.checkpoint.load_model`` rebuild
    the quantized model; any other module gets this module's own format (``model_config`` is
    handed to your factory on load).
    """
    quant = {
        "quant": quant_info(model),
        "amax": amax_state(model),
        "meta": dict(meta or {}),
        "quant_version": VERSION,
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    cfg = getattr(model, "cfg", None)
    if model_config is None and isinstance(cfg, dict) and "name" in cfg:
        from trainer.checkpoint import save_checkpoint

        save_checkpoint(path, model, extra={"loader": LOADER, **quant}, state_dict=state)
        return
    ckpt = {
        "format": FORMAT,
        "model_config": dict(model_config or {}),
        **quant,
        "state_dict": state,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def is_quantized_checkpoint(obj: object) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("quant"), dict) and "state_dict" in obj


def _model_config(ckpt: dict) -> dict:
    if ckpt.get("format") == FORMAT:
        return dict(ckpt.get("model_config") or {})
    keys = {
        "model_name": "name",
        "nc": "nc",
        "width": "width",
        "depth": "depth",
        "implicit": "implicit",
    }
    cfg = {new: ckpt[old] for old, new in keys.items() if old in ckpt}
    cfg["fused"] = True
    return cfg


def _default_factory(cfg: dict) -> nn.Module:
    from trainer.models import build_model

    if "name" not in cfg:
        raise InputError("quantized checkpoint has no built-in model config: pass a model factory")
    keys = ("name", "nc", "width", "depth", "implicit")
    model = build_model(**{k: cfg[k] for k in keys if k in cfg})
    return fuse_model(model) if cfg.get("fused", True) else model


def rebuild(ckpt: dict, model_factory: Callable[[dict], nn.Module] | None = None) -> nn.Module:
    """The quantized model described by a loaded checkpoint dict."""
    if not is_quantized_checkpoint(ckpt):
        raise InputError("not a qdqopt quantized checkpoint")
    model = fuse_model((model_factory or _default_factory)(_model_config(ckpt)))
    info = ckpt["quant"]
    for path in info["quantized"]:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise InputError(
                f"checkpoint quantizes '{path}', which the model does not have"
            ) from None
        if type(module) not in _SWAPS:
            raise InputError(f"checkpoint quantizes '{path}', a {type(module).__name__}")
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, to_quant_module(module))
    quantize_residuals(model)
    tie_quantizers(model, info.get("groups", []))
    for path, amax in ckpt.get("amax", {}).items():  # amax buffers of the stored shapes first
        q = model.get_submodule(path)
        q.register_buffer("_amax", torch.zeros_like(amax))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise InputError(f"quantized checkpoint does not match the rebuilt model: {exc}") from None
    for path in info.get("disabled", []):
        model.get_submodule(path).disable()
    names = ckpt.get("names")
    if names and hasattr(model, "names"):
        model.names = list(names)
    return model.eval()


def load_quantized(
    path: str | os.PathLike, model_factory: Callable[[dict], nn.Module] | None = None
) -> tuple[nn.Module, dict]:
    """(model, checkpoint dict) from a ptq.pt/qat.pt written by :func:`save_quantized`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is bad input
        raise InputError(f"{p}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not is_quantized_checkpoint(ckpt):
        raise InputError(f"{p}: not a qdqopt quantized checkpoint")
    return rebuild(ckpt, model_factory), ckpt
