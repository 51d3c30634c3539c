"""Load a benchmark script as a module, for tests of its counting and measuring functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/ is not a package: load ``benchmarks/NAME.py`` once, registered in
    ``sys.modules`` (its dataclasses need that)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


TRANSFORMERS = BENCHMARKS.parent / "fixtures" / "corpus" / "transformers" / "manifest.json"


def transformer_entries() -> list[dict]:
    """The transformer corpus's manifest entries (raw dicts, as bench_transformers.measure takes
    them), with the manifest's ``prepare`` hook run so the held-out sets they name exist."""
    from qdq_optimizer.testing.corpus import manifest_items

    return manifest_items(TRANSFORMERS) if TRANSFORMERS.is_file() else []
