"""Q/DQ parameters that an exporter computes from constants at run time, folded before anything
reads the model (exact: the values the graph computed).

torch.onnx writes PyTorch's own quantization (``torch.ao.quantization``) this way. A fake-quant
export reads its zero points through ``Identity``; a converted model (``convert_fx``) builds
per-channel zero points as ``Cast(ConstantOfShape(shape))`` and puts a ``Cast`` to the type the
QuantizeLinear already wrote between each activation Q and its DQ; a quantizer whose
``quant_min``/``quant_max`` is narrower than its type (``reduce_range``: uint8 0..127) becomes
Q -> Clip(the integers) -> DQ. Validation, every rule and lint read a Q/DQ parameter as an
initializer or a ``Constant`` and a pair as Q -> DQ, so they refused these graphs (or a
pre-pass crashed on them), or saw no pair. ``fold_computed_params`` turns each parameter
computed only from constants by a few value-preserving ops into an initializer, drops a Cast
between Q and DQ that casts to the type it reads, and moves a Clip of the integers before the
Q as a Clip of the floats at the values its bounds stand for (``Q(clip(x, (lo - z) s,
(hi - z) s)) = clip(Q(x), lo, hi)`` for a per-tensor Q: the bounds are integers times the
scale, which the Q rounds back to themselves). Other Q/DQ parameters are left as they are, for
validation to refuse with its message.

onnx-graphsurgeon's ``fold_constants`` would fold every weight DQ too (TensorRT must read those
quantized); ONNX's reference evaluator computes the few folded subgraphs, by the ONNX spec.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .protos import (
    DEQUANTIZE,
    QDQ_OPS,
    QUANTIZE,
    constant_payload,
    implicit_quant_dtype,
    payload_dtype,
)
from .validate import kahn_order

# ops that move, reshape, fill or cast a constant: the value a parameter holds is theirs
_FOLDABLE = frozenset(
    {"Identity", "Cast", "CastLike", "ConstantOfShape", "Reshape", "Squeeze", "Unsqueeze"}
)
_MAX_NODES = 16  # a parameter's subgraph: a few nodes (a longer one is not an exporter artefact)


def fold_computed_params(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """(model, a note or None): its computed Q/DQ parameters as initializers and its no-op Q ->
    Cast -> DQ links removed. Edited in place (callers pass their own copy); linear in the
    graph's size."""
    folded = _fold_params(model)
    casts = _drop_noop_casts(model)
    clips = _float_clips(model)
    if not folded and not casts and not clips:
        return model, None
    parts = []
    if folded:
        parts.append(f"{folded} Q/DQ scale(s)/zero point(s) computed from constants folded")
    if casts:
        parts.append(f"{casts} Cast(s) between a Q and its DQ to the type the Q writes removed")
    if clips:
        parts.append(
            f"{clips} Clip(s) of the integers between a Q and its DQ (a quant_min/quant_max "
            "narrower than the type, e.g. reduce_range) moved before the Q as the float clamp "
            "they are"
        )
    return model, "exporter artefacts: " + "; ".join(parts) + " (exact)"


def _index(model: onnx.ModelProto):
    nodes = list(model.graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    inits = {t.name: t for t in model.graph.initializer}
    return nodes, producer, inits


def _default_domain(node: onnx.NodeProto, op: str) -> bool:
    return node.op_type == op and node.domain in ("", "ai.onnx")


def _links(model: onnx.ModelProto, op: str, sole_reader: bool):
    """Each ``op`` node between a Q and its DQs: (its index, the Q's index, the DQs' indices),
    when it reads a default-domain Q's output (with ``sole_reader``, nothing else does) and only
    DQs read its output (no graph output); with the index (nodes, producer, inits) it was found
    in."""
    nodes, producer, inits = _index(model)
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            readers.setdefault(t, []).append(i)
    outputs = {o.name for o in model.graph.output}
    found = []
    for i, node in enumerate(nodes):
        if not _default_domain(node, op) or not node.input:
            continue
        q = producer.get(node.input[0])
        if q is None or not _default_domain(nodes[q], QUANTIZE):
            continue
        if sole_reader and (
            readers.get(nodes[q].output[0]) != [i] or nodes[q].output[0] in outputs
        ):
            continue
        users = readers.get(node.output[0], [])
        if node.output[0] in outputs or not users:
            continue
        if any(not _default_domain(nodes[u], DEQUANTIZE) for u in users):
            continue
        found.append((i, q, users))
    return found, (nodes, producer, inits)


def _keep_nodes(model: onnx.ModelProto, nodes: list, dropped: set[int]) -> None:
    del model.graph.node[:]
    model.graph.node.extend(n for j, n in enumerate(nodes) if j not in dropped)


def _subgraph(name: str, nodes, producer, inits) -> list[int] | None:
    """Indices of the foldable nodes ``name`` is computed by, when all of them are foldable
    (or Constant) and read only constants; else None."""
    found: set[int] = set()
    stack = [name]
    while stack:
        t = stack.pop()
        if not t or t in inits:
            continue
        j = producer.get(t)
        if j is None:
            return None  # a graph input
        if j in found:
            continue
        node = nodes[j]
        if node.op_type != "Constant" and (node.op_type not in _FOLDABLE or node.domain):
            return None
        found.add(j)
        if len(found) > _MAX_NODES:
            return None
        stack.extend(node.input)
    return sorted(found)


def _fold_params(model: onnx.ModelProto) -> int:
    nodes, producer, inits = _index(model)
    targets: dict[str, list[int]] = {}
    for node in nodes:
        if node.op_type not in QDQ_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for name in node.input[1:3]:
            if not name or name in targets or constant_payload(name, nodes, producer, inits):
                continue
            sub = _subgraph(name, nodes, producer, inits)
            if sub is not None:
                targets[name] = sub
    if not targets:
        return 0
    values = _evaluate(model, targets, nodes, inits)
    if values is None:
        return 0
    renamed = {}
    taken = set(inits) | set(producer)
    for name, value in values.items():
        new = _fresh(f"{name}_folded", taken)
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), new))
        renamed[name] = new
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx"):
            for k in (1, 2):
                if k < len(node.input) and node.input[k] in renamed:
                    node.input[k] = renamed[node.input[k]]
    _remove_unread({j for sub in targets.values() for j in sub}, model)
    return len(values)


def _evaluate(model, targets: dict[str, list[int]], nodes, inits) -> dict | None:
    """The targets' values, computed by ONNX's reference evaluator on their subgraphs alone."""
    from onnx.reference import ReferenceEvaluator

    order = sorted({j for sub in targets.values() for j in sub})
    needed = {t for j in order for t in nodes[j].input if t in inits}
    graph = onnx.helper.make_graph(
        [nodes[j] for j in order],
        "params",
        [],
        [onnx.helper.make_empty_tensor_value_info(t) for t in targets],
        [inits[t] for t in sorted(needed)],
    )
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    try:
        outs = ReferenceEvaluator(sub).run(None, {})
    except Exception:  # noqa: BLE001 - a malformed subgraph: validation will say what is wrong
        return None
    return dict(zip(targets, outs, strict=True))


def _fresh(name: str, taken: set[str]) -> str:
    k, new = 0, name
    while new in taken:
        k += 1
        new = f"{name}_{k}"
    taken.add(new)
    return new


def _remove_unread(candidates: set[int], model: onnx.ModelProto) -> None:
    """Remove the candidate nodes nothing reads any more (a folded subgraph no one else uses)."""
    nodes = list(model.graph.node)
    reads: dict[str, int] = {}
    for n in nodes:
        for t in n.input:
            reads[t] = reads.get(t, 0) + 1
    outputs = {o.name for o in model.graph.output}
    dead: set[int] = set()
    for j in sorted(candidates, reverse=True):  # readers come after their producers
        n = nodes[j]
        if any(reads.get(o, 0) or o in outputs for o in n.output):
            continue
        dead.add(j)
        for t in n.input:
            reads[t] -= 1
    if dead:
        _keep_nodes(model, nodes, dead)


def _drop_noop_casts(model: onnx.ModelProto) -> int:
    """Q -> Cast(to = the Q's output type) -> DQ: the DQ reads the Q (the Cast changes no value)."""
    links, (nodes, producer, inits) = _links(model, "Cast", sole_reader=False)
    dropped: set[int] = set()
    for i, q, users in links:
        to = next((a.i for a in nodes[i].attribute if a.name == "to"), None)
        if to is None or to != _q_output_type(nodes[q], nodes, producer, inits):
            continue
        for u in users:
            nodes[u].input[0] = nodes[q].output[0]
        dropped.add(i)
    if dropped:
        _keep_nodes(model, nodes, dropped)
    return len(dropped)


def _q_output_type(q: onnx.NodeProto, nodes, producer, inits) -> int | None:
    if len(q.input) > 2 and q.input[2]:
        return payload_dtype(constant_payload(q.input[2], nodes, producer, inits))
    return implicit_quant_dtype(q, nodes, producer, inits)


def _float_clips(model: onnx.ModelProto) -> int:
    """Q -> Clip(lo, hi) -> DQ on the integers of a per-tensor Q: Clip(x, (lo - z) s, (hi - z) s)
    -> Q -> DQ (the same values; the clamp becomes one TensorRT fuses as an activation)."""
    links, (nodes, producer, inits) = _links(model, "Clip", sole_reader=True)
    taken = set(inits) | set(producer)
    moved = 0
    for i, qi, users in links:
        clip, q = nodes[i], nodes[qi]
        bounds = _clip_bounds(clip, q, nodes, producer, inits)
        params = _per_tensor_params(q, nodes, producer, inits)
        if bounds is None or params is None:
            continue
        scale, zp = params
        lo, hi = ((np.float64(b) - np.float64(zp)) * np.float64(scale) for b in bounds)
        dtype = np.asarray(scale).dtype
        names = [_fresh(f"{clip.output[0]}_{k}", taken) for k in ("min", "max")]
        for name, v in zip(names, (lo, hi), strict=True):
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(v, dtype), name))
        # the Clip now reads the Q's input and the Q reads the Clip; the DQs read the Q
        clip_in, q_out = q.input[0], q.output[0]
        clip.input[:] = [clip_in, *names]
        clip.output[0] = _fresh(f"{clip.output[0]}_float", taken)
        q.input[0] = clip.output[0]
        for u in users:
            nodes[u].input[0] = q_out
        moved += 1
    if moved:  # the Clip now comes before its Q: restore topological order
        _sort_nodes(model)
    return moved


def _clip_bounds(clip, q, nodes, producer, inits) -> tuple[int, int] | None:
    """The Clip's integer bounds; an omitted one is the Q's type's (where it saturates anyway)."""
    qtype = _q_output_type(q, nodes, producer, inits)
    if qtype not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        return None
    info = np.iinfo(onnx.helper.tensor_dtype_to_np_dtype(qtype))
    vals = []
    for k in (1, 2):
        if k >= len(clip.input) or not clip.input[k]:
            vals.append(int(info.min if k == 1 else info.max))
            continue
        payload = constant_payload(clip.input[k], nodes, producer, inits)
        if payload is None:
            return None
        v = np.asarray(
            numpy_helper.to_array(payload) if isinstance(payload, onnx.TensorProto) else payload
        )
        if v.size != 1 or v.dtype.kind not in "iu":
            return None
        vals.append(int(v.reshape(())))
    return vals[0], vals[1]


def _per_tensor_params(q, nodes, producer, inits) -> tuple[np.ndarray, int] | None:
    payloads = [constant_payload(t, nodes, producer, inits) if t else None for t in q.input[1:3]]
    if payloads[0] is None:
        return None
    arrays = [
        None
        if p is None
        else np.asarray(numpy_helper.to_array(p) if isinstance(p, onnx.TensorProto) else p)
        for p in payloads
    ]
    scale = arrays[0]
    zp = arrays[1] if len(arrays) > 1 and arrays[1] is not None else np.zeros((), np.int64)
    if scale.size != 1 or zp.size != 1 or scale.dtype.kind != "f":
        return None
    return scale.reshape(()), int(zp.reshape(()))


def _sort_nodes(model: onnx.ModelProto) -> None:
    """Topological order (validation's Kahn order); a graph with a cycle is left for validation
    to refuse."""
    nodes, producer, _ = _index(model)
    order, pending = kahn_order(nodes, producer)
    if any(pending):
        return
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
