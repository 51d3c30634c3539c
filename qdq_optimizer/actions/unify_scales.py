"""Rule 1: one scale per scale group (``qdq_optimizer.scale_groups``).

Policies:
- ``max`` (default): the largest scale of the group, so no value that was representable before
  is clipped (the smaller-scale quantizers lose resolution instead);
- ``output``: the scale of the quantizers reading the group's sink tensors (the consumer side:
  a Concat's output Q), largest if several;
- ``calibrated``: from data. With ranges measured on calibration samples (``settings:
  observed_ranges``, tensor name -> largest |x|, and ``observed_runs``; measured before the rules
  run by ``qdq_optimizer.calibration.measure_ranges`` for ``optimize --calibration-data``) a group
  that holds a residual skip, and either disagrees or holds a skip quantizer residual-add inserted
  in this run, gets a scale covering the largest |x| seen on the samples (at least its largest
  scale: ``qdq_optimizer.calibration`` says why),
  unless its skip quantizer came with the input: that (producer-calibrated) scale is kept while
  it clips no worse than ``max|x| / 127`` (quantization error on the pre-pass histograms); other
  groups that disagree take ``max``. Groups that already agree and gained no skip quantizer keep
  their scale, so right graphs and second runs are unchanged. Without samples, ``amax / 127`` from
  stored activation ranges (``ranges``: a JSON file or a dict of tensor name -> amax; the largest
  amax over the group's tensors). Groups with neither fall back to ``max`` (noted).
Each change reports how far every moved quantizer's scale went.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError, RuleSetError
from ..graph import Node, QGraph
from ..histogram import quantization_error
from ..report import Change
from ..scale_groups import ScaleGroup, joining_inputs, paired_dqs, scale_groups
from ..trt_patterns import residual_inputs
from .registry import ActionContext, register_action
from .residual import INSERTED_SKIP_QS

POLICIES = ("max", "output", "calibrated")


def _load_ranges(value: object) -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    path = Path(str(value))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read activation ranges {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"activation ranges {path}: expected an object of tensor name -> amax")
    return {str(k): float(v) for k, v in data.items()}


def _sink_quantizers(graph: QGraph, g: ScaleGroup) -> list[Node]:
    fed = {id(t) for op in g.ops for t in joining_inputs(graph, op)}
    return [q for q in g.quantizers if id(q.inputs[0]) not in fed]


def _target(
    graph: QGraph, g: ScaleGroup, scales: list[float], policy: str, ranges: dict[str, float], ctx
) -> float:
    if policy == "output":
        sinks = [float(graph.qparams(q).scale.reshape(-1)[0]) for q in _sink_quantizers(graph, g)]
        if sinks:
            return max(sinks)
    if policy == "calibrated":
        amax = [ranges[t.name] for t in g.tensors if t.name in ranges]
        if amax:
            return float(np.float32(max(amax) / 127.0))
        ctx.note(f"no stored range for the group of {g.quantizers[0].name}: used max")
    return max(scales)


def _feeds_residual_skip(graph: QGraph, q: Node) -> bool:
    """True when the quantizer feeds (through its DQ) the skip of a residual Add."""
    for dq in paired_dqs(graph, q):
        for add in graph.consumers(dq.outputs[0]):
            if add.op != "Add":
                continue
            split = residual_inputs(graph, add)
            if split is not None and add.inputs[split[1]] is dq.outputs[0]:
                return True
    return False


def _holds_residual_skip(graph: QGraph, qs: list[Node]) -> bool:
    """True when one of the group's quantizers feeds (through its DQ) the skip of a residual Add."""
    return any(_feeds_residual_skip(graph, q) for q in qs)


def _producer_skip_scales(
    graph: QGraph,
    todo: list,
    observed: dict[int, float],
    inserted: set[str],
    histograms: dict[str, np.ndarray],
    ranges: dict[str, float],
) -> dict[int, float]:
    """Groups whose skip quantizer came with the input (a producer calibrated it, e.g. by MSE)
    keep that scale unless it clips worse than ``max|x| / 127``: smaller quantization error on
    the samples (read off the pre-pass histograms: ``histogram.quantization_error``). A scale that
    covers the peak clips nothing and is kept without measuring."""
    candidates: dict[int, tuple[float, str]] = {}
    for i, (_, qs, scales, _) in enumerate(todo):
        if i not in observed:
            continue
        own = [
            (s, q.inputs[0].name)
            for q, s in zip(qs, scales, strict=True)
            if q.name not in inserted and _feeds_residual_skip(graph, q)
        ]
        if own:
            candidates[i] = max(own)
    kept = {i: s for i, (s, _) in candidates.items() if s >= observed[i] / 127.0}
    measure = {i: c for i, c in candidates.items() if i not in kept}
    for i, (s, name) in measure.items():
        counts = histograms.get(name)
        if counts is None:
            continue  # not measured (a tensor the input did not quantize): take the peak
        own_err = quantization_error(counts, ranges[name], s)
        if own_err <= quantization_error(counts, ranges[name], observed[i] / 127.0):
            kept[i] = s
    return kept


def _observed(
    groups: list[tuple[int, list[Node]]], measured: dict[str, float] | None
) -> dict[int, float]:
    """Largest |x| on the calibration samples over the tensors each group quantizes."""
    if not groups or measured is None:
        return {}
    found: dict[int, float] = {}
    for i, qs in groups:
        seen = [measured[n] for n in {q.inputs[0].name for q in qs} if n in measured]
        if seen and max(seen) > 0:
            found[i] = max(seen)
    return found


def _describe(g: ScaleGroup) -> str:
    counts: dict[str, int] = {}
    for op in g.ops:
        counts[op.op] = counts.get(op.op, 0) + 1
    joined = (
        ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(counts.items())) or "one tensor"
    )
    return f"{len(g.quantizers)} quantizers joined by {joined}"


# policy/ranges default to None so a rule set's `settings: {scale_policy, ranges}` applies (then max).
@register_action("unify_scale_groups", params={"policy": None, "ranges": None})
def unify_scale_groups(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Give every scale group one scale by the chosen policy; report how far each scale moved."""
    policy = str(params.get("policy") or ctx.settings.get("scale_policy") or "max")
    if policy not in POLICIES:
        raise RuleSetError(
            f"unify_scale_groups: unknown policy '{policy}' (choose {', '.join(POLICIES)})"
        )
    ranges = _load_ranges(params.get("ranges") or ctx.settings.get("ranges"))
    data = ctx.settings.get("observed_ranges") if policy == "calibrated" else None
    runs = ctx.settings.get("observed_runs", 0)
    inserted = ctx.run.get(INSERTED_SKIP_QS, set())
    todo = []
    for g in scale_groups(graph):
        qs = [q for q in g.quantizers if not graph.is_graph_output(q.outputs[0])]
        if len(qs) < 2:
            continue
        scales = [float(graph.qparams(q).scale.reshape(-1)[0]) for q in qs]
        agree = len({np.float32(s).tobytes() for s in scales}) == 1
        skip = data is not None and _holds_residual_skip(graph, qs)
        fresh = skip and any(q.name in inserted for q in qs)
        if agree and not fresh and (policy != "calibrated" or data is not None):
            continue
        todo.append((g, qs, scales, skip))
    observed = _observed([(i, t[1]) for i, t in enumerate(todo) if t[3]], data)
    if inserted and data is None:
        ctx.warn(
            f"{len(inserted)} residual skip(s) were quantized with a scale borrowed from another "
            "quantizer; --calibration-data SAMPLES.npz sizes them from data"
        )
    histograms = ctx.settings.get("observed_histograms") or {}
    producer = (
        _producer_skip_scales(graph, todo, observed, inserted, histograms, data) if observed else {}
    )
    changes: list[Change] = []
    for i, (g, qs, scales, skip) in enumerate(todo):
        if i in producer:
            target = producer[i]
            how = (
                "calibrated: residual skip, the input's skip scale kept (it clips no worse than "
                f"max |x| {observed[i]:.4g} / 127 in {runs} batch(es))"
            )
        elif i in observed:
            target = max(max(scales), observed[i] / 127.0)
            how = f"calibrated: residual skip, max |x| {observed[i]:.4g} in {runs} batch(es)"
        elif data is not None:
            if skip:
                ctx.note(f"no calibration values reached the group of {qs[0].name}: used max")
            target, how = max(scales), "max"
        else:
            target, how = _target(graph, g, scales, policy, ranges, ctx), policy
        target = float(np.float32(target))
        moved = [
            (q, s) for q, s in zip(qs, scales, strict=True) if np.float32(s) != np.float32(target)
        ]
        if not moved:
            continue
        parts = [f"{q.name} {s:.6g} ({(target / s - 1) * 100:+.1f}%)" for q, s in moved]
        changes.append(
            Change(
                "rescale",
                [q.name for q, _ in moved],
                f"{_describe(g)}: scale {target:.6g} ({how}); moved " + "; ".join(parts),
            )
        )
        if ctx.dry_run:
            continue
        value = np.float32(target)
        for q, _ in moved:
            graph.set_qparams(q, value)
            for dq in paired_dqs(graph, q):
                graph.set_qparams(dq, value)
    return changes
