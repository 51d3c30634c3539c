"""Parse TensorRT tensor format strings into a canonical dtype and a layout.

TensorRT spells a tensor's type differently in every release: long layout sentences
("Thirty-two wide channel vectorized row major Int8 format"), bare Myelin types ("Half"),
a trailing "." (8.2), a split Format/DataType pair with "(kLINEAR)" suffixes (11) and enum
names ("kINT8", "DataType.HALF"). Only the dtype token matters for precision, so we scan the
words of the string for the first one that names a type and keep the rest as the layout.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Canonical precision names used everywhere in the inspect report.
INT8 = "INT8"
FP16 = "FP16"
FP32 = "FP32"

_TOKENS: dict[str, str] = {
    "int8": INT8,
    "kint8": INT8,
    "i8": INT8,
    "fp16": FP16,
    "half": FP16,
    "khalf": FP16,
    "float16": FP16,
    "f16": FP16,
    "fp32": FP32,
    "float": FP32,
    "kfloat": FP32,
    "float32": FP32,
    "f32": FP32,
    "bfloat16": "BF16",
    "bf16": "BF16",
    "kbf16": "BF16",
    "fp8": "FP8",
    "kfp8": "FP8",
    "e4m3": "FP8",
    "fp4": "FP4",
    "kfp4": "FP4",
    "e2m1": "FP4",
    "int4": "INT4",
    "kint4": "INT4",
    "int16": "INT16",
    "int32": "INT32",
    "kint32": "INT32",
    "int64": "INT64",
    "kint64": "INT64",
    "uint8": "UINT8",
    "kuint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "kbool": "BOOL",
    "double": "FP64",
    "fp64": "FP64",
    "e8m0": "E8M0",
    "ke8m0": "E8M0",
}

# Types that carry activations (as opposed to shape tensors and masks).
FLOAT_OR_QUANT = frozenset({INT8, FP16, FP32, "BF16", "FP8", "FP4", "INT4", "FP64"})

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_NA = re.compile(r"\bN/?A\b|dynamic shape", re.IGNORECASE)


def parse_dtype(text: object) -> str | None:
    """Canonical dtype named in a TensorRT format/type string, or None when it names none."""
    if not isinstance(text, str):
        return None
    return _parse_dtype(text)


@lru_cache(maxsize=4096)  # a report repeats a handful of format strings thousands of times
def _parse_dtype(text: str) -> str | None:
    for word in _WORD.findall(text.replace("DataType.", "")):
        hit = _TOKENS.get(word.lower())
        if hit:
            return hit
    return None


def parse_layout(text: object) -> str:
    """The layout part of a format string, without the dtype word, the '(kLINEAR)' enum, or 'format'."""
    if not isinstance(text, str):
        return ""
    return _parse_layout(text)


@lru_cache(maxsize=4096)
def _parse_layout(text: str) -> str:
    s = text.strip().rstrip(".").strip()
    s = re.sub(r"\s*\((k[A-Z0-9_]+)\)", "", s)
    words = [w for w in s.split() if _TOKENS.get(w.lower().strip(".,")) is None]
    words = [w for w in words if w.lower() != "format"]
    return " ".join(words)


def is_unavailable(text: object) -> bool:
    """True for 'N/A due to dynamic shapes' and similar: the type is unknown, not guessable."""
    return isinstance(text, str) and bool(_NA.search(text))
