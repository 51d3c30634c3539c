"""A Q/DQ-aware difference of two graphs: which quantization points were added, removed, moved
or rescaled, and which other nodes were added, removed or changed.

A model is seen as its non-Q/DQ nodes (matched by name; unnamed ones by op and position) and
its *edges*: every input slot of such a node (and every graph output) traced back through any
chain of Q/DQ nodes to the tensor it really comes from. The chain's scales are the quantization
on that edge. Two models differ in Q/DQ placement exactly when some edge's chain differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .dump import format_attrs, format_const
from .protos import QDQ_OPS, qdq_param_values


@dataclass(frozen=True)
class _View:
    nodes: dict[str, tuple[str, str]]  # key -> (op, attrs text)
    edges: dict[tuple[str, str], tuple[str, tuple[str, ...]]]  # (consumer, slot) -> (source, chain)
    shared: dict[tuple[str, str], frozenset]  # quantized edge -> edges reading the same DQ output
    qdq: tuple[int, int]  # number of Q and DQ nodes


@dataclass
class GraphDiff:
    pairs_added: list[str] = field(default_factory=list)
    pairs_removed: list[str] = field(default_factory=list)
    pairs_moved: list[str] = field(default_factory=list)
    scales_changed: list[str] = field(default_factory=list)
    chains_changed: list[str] = field(default_factory=list)
    sharing_changed: list[str] = field(default_factory=list)
    qdq_counts: list[str] = field(default_factory=list)
    inputs_rewired: list[str] = field(default_factory=list)
    nodes_added: list[str] = field(default_factory=list)
    nodes_removed: list[str] = field(default_factory=list)
    nodes_changed: list[str] = field(default_factory=list)
    note: str | None = None  # e.g. the two models share few node names (different exports)

    SECTIONS = (
        ("pairs_added", "Q/DQ added"),
        ("pairs_removed", "Q/DQ removed"),
        ("pairs_moved", "Q/DQ moved"),
        ("scales_changed", "scales changed"),
        ("chains_changed", "Q/DQ chains changed"),
        ("sharing_changed", "Q/DQ sharing changed"),
        ("qdq_counts", "Q/DQ node count changed"),
        ("inputs_rewired", "inputs rewired"),
        ("nodes_added", "nodes added"),
        ("nodes_removed", "nodes removed"),
        ("nodes_changed", "nodes changed"),
    )

    @property
    def differ(self) -> bool:
        return any(getattr(self, k) for k, _ in self.SECTIONS)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k, _ in self.SECTIONS}

    def to_text(self) -> str:
        if not self.differ:
            return "no differences\n"
        out = [f"note: {self.note}"] if self.note else []
        for key, title in self.SECTIONS:
            items = getattr(self, key)
            if items:
                out.append(f"{title} ({len(items)}):")
                out.extend(f"  {line}" for line in items)
        summary = ", ".join(
            f"{len(getattr(self, k))} {t}" for k, t in self.SECTIONS if getattr(self, k)
        )
        out.append(f"summary: {summary}")
        return "\n".join(out) + "\n"


def diff_models(a: onnx.ModelProto, b: onnx.ModelProto, precision: int = 6) -> GraphDiff:
    va, vb = _view(a, precision), _view(b, precision)
    d = GraphDiff(note=_name_overlap_note(va, vb))
    for key in sorted(vb.nodes.keys() - va.nodes.keys()):
        d.nodes_added.append(f"{key} ({vb.nodes[key][0]})")
    for key in sorted(va.nodes.keys() - vb.nodes.keys()):
        d.nodes_removed.append(f"{key} ({va.nodes[key][0]})")
    for key in sorted(va.nodes.keys() & vb.nodes.keys()):
        (op_a, at_a), (op_b, at_b) = va.nodes[key], vb.nodes[key]
        if op_a != op_b:
            d.nodes_changed.append(f"{key}: op {op_a} -> {op_b}")
        elif at_a != at_b:
            d.nodes_changed.append(f"{key} ({op_a}): attributes{at_a or ' {}'} ->{at_b or ' {}'}")

    added: list[tuple[tuple[str, str], str, tuple[str, ...]]] = []
    removed: list[tuple[tuple[str, str], str, tuple[str, ...]]] = []
    for edge in sorted(va.edges.keys() | vb.edges.keys()):
        ea, eb = va.edges.get(edge), vb.edges.get(edge)
        if ea is None or eb is None:
            continue  # the consumer itself was added/removed: reported as a node
        (src_a, ch_a), (src_b, ch_b) = ea, eb
        if src_a != src_b:
            d.inputs_rewired.append(f"{_edge(edge)}: from {src_a} -> from {src_b}")
        if ch_a == ch_b:
            if ch_a and va.shared.get(edge) != vb.shared.get(edge):
                n_a, n_b = len(va.shared[edge]), len(vb.shared[edge])
                verb = "now shares" if n_b > n_a else "no longer shares"
                d.sharing_changed.append(
                    f"{_edge(edge)}: {verb} its Q/DQ ({n_a} -> {n_b} reader(s))"
                )
            continue
        if not ch_a:
            added.append((edge, src_b, ch_b))
        elif not ch_b:
            removed.append((edge, src_a, ch_a))
        elif len(ch_a) == len(ch_b):
            d.scales_changed.append(f"{_edge(edge)}: {_chain(ch_a)} -> {_chain(ch_b)}")
        else:
            d.chains_changed.append(f"{_edge(edge)}: {_chain(ch_a)} -> {_chain(ch_b)}")
    # A removed pair and an added pair with the same scales: the quantization moved.
    for r in list(removed):
        m = next((a for a in added if a[2] == r[2]), None)
        if m is not None:
            added.remove(m)
            removed.remove(r)
            d.pairs_moved.append(f"{_chain(r[2])}: from {_edge(r[0])} to {_edge(m[0])}")
    if va.qdq != vb.qdq:
        d.qdq_counts.append(f"{va.qdq[0]} Q + {va.qdq[1]} DQ -> {vb.qdq[0]} Q + {vb.qdq[1]} DQ")
    d.pairs_added.extend(f"{_edge(e)} (from {s}): {_chain(c)}" for e, s, c in added)
    d.pairs_removed.extend(f"{_edge(e)} (from {s}): {_chain(c)}" for e, s, c in removed)
    return d


def _name_overlap_note(va: _View, vb: _View) -> str | None:
    """Nodes are matched by name: say so when two models share few names (another exporter or a
    renaming pass), since every node then shows up as removed and added."""
    named_a = {k for k in va.nodes if not k.startswith("<")}
    named_b = {k for k in vb.nodes if not k.startswith("<")}
    smaller = min(len(named_a), len(named_b))
    common = len(named_a & named_b)
    if smaller < 5 or common * 2 >= smaller:
        return None
    return (
        f"only {common} of {smaller} node names match, so A and B look like different exports; "
        "nodes are matched by name here (`qdqopt dump`, which ignores names, compares them "
        "structurally)"
    )


def _edge(edge: tuple[str, str]) -> str:
    consumer, slot = edge
    return f"{consumer} input {slot}" if consumer != "<output>" else f"graph output {slot}"


def _chain(chain: tuple[str, ...]) -> str:
    return "[" + ", ".join(chain) + "]"


def _view(model: onnx.ModelProto, precision: int) -> _View:
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    params, hidden = qdq_param_values(model)
    node_list = list(g.node)  # one wrapper object per node, so id() keys are stable
    producer = {o: n for n in node_list for o in n.output if o}
    key_of: dict[int, str] = {}
    unnamed: dict[str, int] = {}
    nodes: dict[str, tuple[str, str]] = {}
    for idx, n in enumerate(node_list):
        if n.op_type in QDQ_OPS or idx in hidden:
            continue
        if n.name and n.name not in nodes:
            key = n.name
        else:
            unnamed[n.op_type] = unnamed.get(n.op_type, 0) + 1
            key = f"<{n.op_type} #{unnamed[n.op_type]}>"
        key_of[id(n)] = key
        nodes[key] = (n.op_type, format_attrs(n, precision))

    def trace(tensor: str) -> tuple[str, tuple[str, ...]]:
        chain: list[str] = []
        seen = 0
        while tensor in producer and producer[tensor].op_type in QDQ_OPS and seen < 64:
            q = producer[tensor]
            chain.append(_qdq_label(q, params, precision))  # noqa: PERF401
            tensor = q.input[0] if q.input else ""
            seen += 1
        chain.reverse()
        if tensor in producer:
            p = producer[tensor]
            k = list(p.output).index(tensor)
            src = key_of.get(id(p), p.op_type) + (f":{k}" if len(p.output) > 1 else "")
        elif tensor in inits:
            src = "const " + format_const(numpy_helper.to_array(inits[tensor]), precision)
        else:
            src = f"input {tensor}" if tensor else "-"
        return src, tuple(chain)

    edges: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
    readers: dict[str, list[tuple[str, str]]] = {}
    for idx, n in enumerate(node_list):
        if n.op_type in QDQ_OPS or idx in hidden:
            continue
        for i, t in enumerate(n.input):
            if t:
                edge = (key_of[id(n)], str(i))
                edges[edge] = trace(t)
                if edges[edge][1]:
                    readers.setdefault(t, []).append(edge)
    for vi in g.output:
        edges[("<output>", vi.name)] = trace(vi.name)
    shared = {e: frozenset(group) for group in readers.values() for e in group}
    n_q = sum(1 for n in node_list if n.op_type == "QuantizeLinear")
    n_dq = sum(1 for n in node_list if n.op_type == "DequantizeLinear")
    return _View(nodes, edges, shared, (n_q, n_dq))


def _qdq_label(node: onnx.NodeProto, params: dict, precision: int) -> str:
    op = "Q" if node.op_type == "QuantizeLinear" else "DQ"
    if len(node.input) < 2 or node.input[1] not in params:
        return f"{op} ?"
    s = np.asarray(params[node.input[1]]).reshape(-1)
    if s.size == 1:
        return f"{op} {float(s[0]):.{precision}g}"
    rounded = ",".join(f"{float(v):.{precision}g}" for v in s)
    return f"{op} per-axis[{s.size}]#{hashlib.sha1(rounded.encode()).hexdigest()[:8]}"
