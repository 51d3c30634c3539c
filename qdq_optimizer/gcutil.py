"""Garbage-collector control for passes that build many small, acyclic objects."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building many small containers next to a large
    onnx-graphsurgeon graph otherwise triggers full collections that walk every object and
    make linear passes look quadratic. Nothing we create here forms reference cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
