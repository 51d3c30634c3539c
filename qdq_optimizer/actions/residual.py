"""Rule 2: residual Add. TensorRT fuses ``Add(conv_branch, skip)`` into the conv as an INT8
epilogue when the skip input arrives through DQ and the conv-branch input has no Q/DQ ("quantize
the residual input in skip connections"; a Q/DQ on the conv branch blocks the fusion).

Branches are told apart by structure (``trt_patterns.residual_inputs``, which lint shares): the
conv branch is the input TensorRT can fuse the Add into (a weighted op's output after a fusable
epilogue, read by nothing else); constants are never skips; between sibling conv branches a
placement that is already right is kept. A skip with no quantizer to take a scale from is
recorded as a problem this rule cannot fix (``ctx.cannot_fix``).
The skip's Q/DQ uses the scale of the skip tensor's existing quantizer (the largest if several),
else of its scale group's, else (``--calibration-data``) ``max|x| / 127`` on the samples, else the
scale of the quantizer that reads the Add's sum (directly or after a Relu): the fused kernel
re-quantizes the sum at that scale anyway, so a skip at the same step adds rounding of the order
the output already has. Borrowed scales are warned and calibrated from data when samples are
given; later rules then unify the group and merge duplicate quantizers.
"""

from __future__ import annotations

import numpy as np

from ..graph import Node, QGraph, Tensor
from ..ops import GEMM_OPS
from ..report import Change
from ..scale_groups import scale_groups
from ..trt_patterns import (
    activation_pair,
    fusion_target,
    is_ignored,
    is_int8_tensor,
    is_quantized_weighted,
    residual_inputs,
)
from .registry import ActionContext, register_action
from .skip_scales import scale_from_samples

# ActionContext.run key: names of the skip quantizers this run inserted (scale-groups calibrates
# them from data: their scale was only borrowed from another consumer's quantizer).
INSERTED_SKIP_QS = "inserted_skip_quantizers"


def _per_tensor_scales(graph: QGraph, qs: list[Node]) -> list[float]:
    """The positive per-tensor scales of ``qs`` (per-axis and non-constant ones skipped)."""
    out = []
    for q in qs:
        try:
            p = graph.qparams(q)
        except ValueError:
            continue
        if not p.per_axis and float(p.scale.reshape(-1)[0]) > 0:
            out.append(float(p.scale.reshape(-1)[0]))
    return out


def _skip_scale(graph: QGraph, t: Tensor, groups: dict[str, list[Node]]) -> float | None:
    own = _per_tensor_scales(graph, graph.quantizers_of(t))
    if own:
        return max(own)
    shared = _per_tensor_scales(graph, groups.get(t.name, []))
    return max(shared) if shared else None


def _sum_scale(graph: QGraph, add: Node) -> float | None:
    """The largest scale of the quantizers that read ``add``'s sum, directly or after one Relu
    (C2PSA's ``proj(attn + pe(v))``, a ResNet block's ``Relu(conv + downsample)``)."""
    out = add.outputs[0]
    readers = graph.consumers(out)
    if len(readers) == 1 and readers[0].op == "Relu":
        out = readers[0].outputs[0]
    scales = _per_tensor_scales(graph, graph.quantizers_of(out))
    return max(scales) if scales else None


def _groups(graph: QGraph, ctx: ActionContext) -> dict[str, list[Node]]:
    """Tensor name -> quantizers of its scale group: a whole-graph fact, computed once per
    iteration of the rule (at the first Add that needs it) and kept in ``ctx.cache``."""
    groups = ctx.cache.get("scale_groups")
    if groups is None:
        groups = {}
        for g in scale_groups(graph):
            for t in g.tensors:
                groups[t.name] = g.quantizers
        ctx.cache["scale_groups"] = groups
    return groups


@register_action("residual_add", params={})
def residual_add(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Quantize the skip input of a residual Add (the anchor) and remove Q/DQ from its
    conv-branch input."""
    add = node
    if add is None or add.op != "Add" or is_ignored(add, ctx.ignore):
        return []
    split = residual_inputs(graph, add)
    if split is None:
        return []
    bi, si = split
    conv = fusion_target(graph, add, bi)
    if conv is None or not is_quantized_weighted(graph, conv):
        return []  # a float conv branch: nothing for TensorRT to fuse in INT8
    changes: list[Change] = []
    pair = activation_pair(graph, add.inputs[bi])
    if pair is not None:
        changes.append(
            Change(
                "remove",
                [pair[0].name, pair[1].name],
                f"Q/DQ on the conv-branch input of '{add.name}'",
            )
        )
        if not ctx.dry_run:
            graph.bypass_qdq(*pair, consumers=[add])
    skip = add.inputs[si]
    if is_int8_tensor(graph, skip):
        return changes
    if conv.op in GEMM_OPS:  # xrules: a GEMM branch keeps a skip Q/DQ but gets none inserted
        return changes
    scale = _skip_scale(graph, skip, _groups(graph, ctx))
    scale = scale_from_samples(graph, skip, ctx) if scale is None else scale  # skip_scales.py
    scale = _sum_scale(graph, add) if scale is None else scale
    if scale is None:
        ctx.note(f"skip input '{skip.name}' of '{add.name}' has no quantizer to take a scale from")
        ctx.cannot_fix(
            [add.name],
            f"skip input '{skip.name}' is not quantized and no quantizer reads it or the sum "
            f"to take a scale from: the Add cannot fuse into '{conv.name}' (quantize it at the producer)",
        )
        return changes
    changes.append(
        Change("insert", [add.name], f"Q/DQ on skip input '{skip.name}' (scale {scale:.6g})")
    )
    if not ctx.dry_run:
        q, _, _ = graph.insert_qdq(
            skip, np.float32(scale), np.int8(0), consumers=[add], name=f"{add.name}_skip"
        )
        ctx.run.setdefault(INSERTED_SKIP_QS, set()).add(q.name)
    return changes
