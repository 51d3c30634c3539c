"""Saving and loading detector checkpoints, safely by default.

Our own checkpoints hold only plain types and tensors (``{"format", "model_name", "nc", "width",
"depth", "state_dict", ...}``) and load with ``torch.load(weights_only=True)``. Official yolov7
``.pt`` files are full pickles of the upstream classes: unpickling them can execute arbitrary code,
so they load only with ``trust_checkpoint=True`` -- through the user's yolov7 repository
(``yolov7_repo``), or without it through a restricted unpickler that replaces every upstream class
by an inert stand-in and keeps only the tensors.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from qdq_optimizer.errors import InputError
from qdq_optimizer.fileio import atomic_path

from .models import build_model
from .models.yolo import YoloModel

FORMAT = "qdqopt-yolo"
HEADS = {"yolov7": 105, "yolov7-tiny": 77}
TRUST_HINT = (
    "a pickle can execute arbitrary code; if you trust the file pass --trust-checkpoint "
    "(trust_checkpoint=True), optionally with --yolov7-repo DIR"
)


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    extra: dict | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Atomically write ``model`` (a built-in detector) as a weights-only checkpoint.

    ``extra`` must hold plain types (numbers, strings, lists, dicts) so the file stays loadable with
    ``weights_only=True``; e.g. ``{"metrics": {...}, "epoch": 3, "img_size": 160}``. A key
    ``"loader": "trainer.<module>:<function>"`` names who rebuilds non-float checkpoints.
    """
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise InputError("save_checkpoint needs a built-in detector (trainer.models.build_model)")
    sd = state_dict if state_dict is not None else model.state_dict()
    payload = {
        "format": FORMAT,
        "version": 1,
        "model_name": cfg["name"],
        "nc": int(cfg["nc"]),
        "width": float(cfg["width"]),
        "depth": float(cfg["depth"]),
        "implicit": bool(cfg.get("implicit", False)),
        "fused": bool(cfg.get("fused", False)),
        "names": [str(n) for n in getattr(model, "names", [])],
        **(extra or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in sd.items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


# ----------------------------------------------------------------------------- loading


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a weights-only file (our format or a plain state dict) without building a model."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{p}: not a weights-only checkpoint ({TRUST_HINT})") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on junk
        raise InputError(f"{p}: not a PyTorch checkpoint ({_short(exc)})") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{p}: not a model checkpoint (holds a {type(obj).__name__})")
    return obj


def load_model(
    path: str | os.PathLike,
    name: str | None = None,
    nc: int | None = None,
    trust_checkpoint: bool = False,
    yolov7_repo: str | os.PathLike | None = None,
) -> nn.Module:
    """Build the detector stored in ``path`` (our checkpoint, a state dict, or an official .pt).

    ``name``/``nc`` override what is inferred from the weights (and are checked against them).
    The result is in eval mode on the CPU, unfused unless the file held fused weights.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    if yolov7_repo is not None:
        if not trust_checkpoint:
            raise InputError(
                f"{p}: loading through the yolov7 repo unpickles the file: {TRUST_HINT}"
            )
        sd = _load_with_repo(p, Path(yolov7_repo))
        return model_from_state_dict(sd, name, nc, source=str(p))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_checkpoint:
            raise InputError(
                f"{p}: a full pickle (e.g. an official yolov7 .pt): {TRUST_HINT}"
            ) from exc
        sd = _restricted_state_dict(p)
        return model_from_state_dict(sd, name, nc, source=str(p))
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on junk
        raise InputError(f"{p}: not a PyTorch checkpoint ({_short(exc)})") from exc
    return model_from_payload(obj, name, nc, source=str(p))


def model_from_payload(
    obj: object, name: str | None = None, nc: int | None = None, source: str = "checkpoint"
) -> nn.Module:
    """A model from what ``torch.load(weights_only=True)`` returned."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        loader = obj.get("loader")
        if loader:
            return _custom_loader(loader, source)(obj)
        _check_override(source, "model", name, obj["model_name"])
        _check_override(source, "class count", nc, obj["nc"])
        model = build_model(
            obj["model_name"], obj["nc"], obj["width"], obj["depth"], obj.get("implicit", False)
        )
        if obj.get("fused"):
            model.fuse()
        _load_into(model, obj["state_dict"], source)
        if obj.get("names") and len(obj["names"]) == obj["nc"]:
            model.names = list(obj["names"])
        return model.eval()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return model_from_state_dict(obj, name, nc, source=source)
    raise InputError(f"{source}: not a model checkpoint (no detector weights found)")


def model_from_state_dict(
    sd: dict[str, torch.Tensor],
    name: str | None = None,
    nc: int | None = None,
    source: str = "checkpoint",
) -> YoloModel:
    """Infer architecture, classes, width, head kind and fusing from official key names; load."""
    found = [n for n, h in HEADS.items() if f"model.{h}.m.0.weight" in sd]
    if not found:
        raise InputError(
            f"{source}: not a YOLOv7 / YOLOv7-tiny checkpoint (no detect head weights)"
        )
    arch = found[0]
    _check_override(source, "model", name, arch)
    h = HEADS[arch]
    head_w = sd[f"model.{h}.m.0.weight"]
    na = sd[f"model.{h}.anchors"].shape[1] if f"model.{h}.anchors" in sd else 3
    nc_found = head_w.shape[0] // na - 5
    _check_override(source, "class count", nc, nc_found)
    c0 = sd["model.0.conv.weight"].shape[0] if "model.0.conv.weight" in sd else 32
    width = c0 / 32
    implicit = f"model.{h}.ia.0.implicit" in sd
    model = build_model(arch, nc_found, width, 1.0, implicit)
    if "model.0.bn.weight" not in sd and "model.0.conv.bias" in sd:
        model.fuse()
    _load_into(model, sd, source)
    return model.eval()


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise InputError(
            f"{source}: weights do not fit the model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys; {what})"
        )
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise InputError(
                f"{source}: {k} has shape {tuple(sd[k].shape)}, the model needs {tuple(v.shape)}"
            )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})


def _check_override(source: str, what: str, given: object, found: object) -> None:
    if given is not None and given != found:
        raise InputError(f"{source}: holds {what} {found!r}, not {given!r}")


# Loaders recorded by earlier versions under a module name that has since changed.
_RENAMED_LOADERS = {
    "trainer.quantization.checkpoint:rebuild": "trainer.quantization.quant_checkpoint:rebuild",
}


def _custom_loader(spec: str, source: str) -> Callable[[dict], nn.Module]:
    mod_name, _, func = _RENAMED_LOADERS.get(str(spec), str(spec)).partition(":")
    if not mod_name.startswith("trainer.") or not func:
        raise InputError(f"{source}: unsupported loader '{spec}'")
    try:
        return getattr(importlib.import_module(mod_name), func)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{source}: loader '{spec}' is unavailable ({_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: " + " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


# ----------------------------------------------------------------------------- official .pt


def _load_with_repo(path: Path, repo: Path) -> dict[str, torch.Tensor]:
    """Unpickle with the user's yolov7 checkout importable, then take the float state dict."""
    if not (repo / "models" / "yolo.py").is_file():
        raise InputError(f"{repo}: not a yolov7 repository (no models/yolo.py)")
    before = set(sys.modules)
    sys.path.insert(0, str(repo))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - arbitrary code ran; report it as bad input
        raise InputError(f"{path}: could not unpickle with {repo} ({_short(exc)})") from exc
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo))
        for mod in set(sys.modules) - before:  # do not leave the repo's 'models'/'utils' around
            if mod.split(".")[0] in ("models", "utils"):
                del sys.modules[mod]
    model = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else ckpt
    if not isinstance(model, nn.Module):
        raise InputError(f"{path}: no model in the checkpoint")
    return {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}


_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
    ("torch.nn.parameter", "Parameter"): nn.Parameter,
}
_SAFE_BUILTINS = {
    "set",
    "frozenset",
    "list",
    "dict",
    "tuple",
    "int",
    "float",
    "bool",
    "str",
    "bytes",
}


class _StandIn:
    """Inert replacement for any class in the pickle: records state, runs nothing."""

    _qualname = "?"

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.__dict__["_args"] = args

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = state[0] if isinstance(state[0], dict) else state[1]
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __setitem__(self, key: object, value: object) -> None:
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value: object) -> None:
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values: object) -> None:
        self.__dict__.setdefault("_list", []).extend(values)  # type: ignore[arg-type]


_STANDINS: dict[str, type] = {}


def _standin(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _STANDINS:
        _STANDINS[key] = type(name, (_StandIn,), {"_qualname": key})
    return _STANDINS[key]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - pickle protocol
        if module == "__builtin__":  # protocol-2 pickles (torch.save) use Python 2 names
            module = "builtins"
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _standin(module, name)


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an Unpickler class and ``load``."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(f, **kwargs):  # pragma: no cover - torch uses Unpickler directly
        return _RestrictedUnpickler(f, **kwargs).load()


def _restricted_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an official checkpoint, with every upstream class replaced by a stand-in."""
    try:
        ckpt = torch.load(
            path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False
        )
    except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable file
        raise InputError(f"{path}: cannot read with the restricted loader ({_short(exc)})") from exc
    root = None
    if isinstance(ckpt, dict):
        root = ckpt.get("ema") or ckpt.get("model")
    elif isinstance(ckpt, _StandIn):
        root = ckpt
    if not isinstance(root, _StandIn) or "_modules" not in root.__dict__:
        raise InputError(f"{path}: no pickled model found in the checkpoint")
    sd: dict[str, torch.Tensor] = {}
    _collect(root, "", sd)
    if not sd:
        raise InputError(f"{path}: the pickled model holds no tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _collect(node: object, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """state_dict() of a stand-in module tree: parameters, persistent buffers, then children."""
    d = getattr(node, "__dict__", {})
    skip = d.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset, list, tuple)) else set()
    for group in ("_parameters", "_buffers"):
        for k, v in (d.get(group) or {}).items():
            if isinstance(v, torch.Tensor) and k not in skip:
                out[prefix + k] = v.detach()
    for k, child in (d.get("_modules") or {}).items():
        if child is not None:
            _collect(child, f"{prefix}{k}.", out)
