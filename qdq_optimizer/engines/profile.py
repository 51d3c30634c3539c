"""Attach per-layer times from ``trtexec --exportProfile`` JSON to an EngineReport.

Rows look like ``{"name", "timeMs", "averageMs", "medianMs", "percentage"}`` after a leading
``{"count": N}`` row; TensorRT 8.2 has no ``medianMs``. We use the median when present (robust
to outliers), else the average: both are per-inference milliseconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from .layer_report import max_bytes_from_env, parse_json_documents, read_text_capped
from .model import EngineReport


@dataclass
class Profile:
    source: str
    times_ms: dict[str, float]  # layer name -> per-inference time
    statistic: str  # "medianMs" or "averageMs"


def _number(row: dict, key: str, where: str) -> float | None:
    if key not in row:
        return None
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InputError(f"{where}: '{key}' must be a number, got {v!r:.40}")
    return float(v)


def load_profile(path: str | os.PathLike, max_bytes: int | None = None) -> Profile:
    """Read an exportProfile JSON file."""
    label = str(path)
    cap = max_bytes if max_bytes is not None else max_bytes_from_env()
    docs = parse_json_documents(read_text_capped(path, "profile", cap), label)
    rows = [r for d in docs for r in (d if isinstance(d, list) else [d])]
    if len(docs) == 1 and not isinstance(docs[0], list):
        raise InputError(
            f"{label}: a profile is a JSON list of per-layer rows (trtexec --exportProfile)"
        )
    times: dict[str, float] = {}
    has_median = any(isinstance(r, dict) and "medianMs" in r for r in rows)
    stat = "medianMs" if has_median else "averageMs"
    for i, row in enumerate(rows):
        where = f"{label}: row {i}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object, got {type(row).__name__}")
        if "name" not in row:
            if "count" in row:
                _number(row, "count", where)
                continue
            raise InputError(f"{where}: profile row without 'name'")
        if not isinstance(row["name"], str):
            raise InputError(f"{where}: 'name' must be a string")
        value = _number(row, stat, where)
        if value is None:
            value = _number(row, "averageMs", where)
        if value is None:
            raise InputError(f"{where}: profile row without 'medianMs' or 'averageMs'")
        _number(row, "timeMs", where)
        _number(row, "percentage", where)
        times[row["name"]] = times.get(row["name"], 0.0) + value
    if not times:
        raise InputError(f"{label}: the profile has no layer rows")
    return Profile(source=label, times_ms=times, statistic=stat)


def attach_profile(report: EngineReport, profile: Profile) -> list[str]:
    """Set time_ms/time_share on matching layers; returns profile rows that matched no layer.

    Rows of folded NoOps and of layers that never ran (zero time) are expected to go unmatched.
    """
    by_name = {layer.name: layer for layer in report.layers}
    unmatched = []
    for name, ms in profile.times_ms.items():
        layer = by_name.get(name)
        if layer is None:
            if ms > 0:
                unmatched.append(name)
            continue
        layer.time_ms = ms
    total = sum(layer.time_ms or 0.0 for layer in report.layers)
    for layer in report.layers:
        layer.time_share = (
            (layer.time_ms / total) if (layer.time_ms is not None and total) else None
        )
    report.total_time_ms = total
    report.profile_source = profile.source
    if unmatched:
        report.warnings.append(
            f"{len(unmatched)} profile row(s) match no layer (e.g. {unmatched[0][:60]!r})"
        )
    missing = [la.name for la in report.layers if la.time_ms is None]
    if missing and len(missing) == len(report.layers):
        report.warnings.append("the profile matches no layer of this report: wrong profile file?")
    return unmatched
