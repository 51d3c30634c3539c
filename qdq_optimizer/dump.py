"""A canonical, deterministic, diff-friendly text form of an ONNX graph.

Nodes appear in a canonical topological order (depth-first from the graph outputs, inputs in
order), so it depends on the graph's structure, not on file order or names. The inputs of
commutative ops (Add, Mul, Max, ...) are visited and printed in the order of a structural key of
the computation behind each, so ``Add(a, b)`` and ``Add(b, a)`` dump the same. Tensors and nodes
are renumbered by that position (``n12``, ``t12``; graph inputs ``in0``; constants ``c3`` at first
use), so a re-export with different names dumps the same text. Q/DQ nodes show their scale and
zero point rounded to a stated number of significant digits; weights and other large constants
are summarised by dtype, shape and a short content hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .protos import QDQ_OPS, qdq_param_values
from .validate import kahn_order

FORMAT_VERSION = 2  # 2: commutative inputs in structural order
SMALL_CONST = 4  # constants with at most this many elements are printed by value
COMMUTATIVE_OPS = frozenset(
    {"Add", "Mul", "Sum", "Max", "Min", "Mean", "And", "Or", "Xor", "Equal", "BitwiseAnd",
     "BitwiseOr", "BitwiseXor"}
)  # fmt: skip


@dataclass
class _Index:
    model: onnx.ModelProto
    inits: dict[str, onnx.TensorProto]
    producer: dict[str, int]


def _is_commutative(node: onnx.NodeProto) -> bool:
    return node.op_type in COMMUTATIVE_OPS and node.domain in ("", "ai.onnx")


def _topological(nodes) -> list[int]:
    """Node indices producers first; nodes on a cycle (invalid graphs) last, in file order."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    order, _ = kahn_order(nodes, producer)
    placed = set(order)
    return order + [i for i in range(len(nodes)) if i not in placed]


def structural_keys(
    model: onnx.ModelProto, params: dict[str, np.ndarray], precision: int = 6
) -> dict[str, str]:
    """Tensor name -> a digest of the computation that produces it: op types, attributes, Q/DQ
    parameters, constants and graph-input positions, never names; the inputs of commutative ops
    sorted, so ``Add(a, b)`` and ``Add(b, a)`` get one key. One pass in topological order."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    key: dict[str, str] = {}
    for k, vi in enumerate(i for i in g.input if i.name not in inits):
        key[vi.name] = f"in{k}"

    def input_key(name: str) -> str:
        if not name:
            return "-"
        if name in params:  # initializer or Constant node: one key either way, as dump shows
            return "p:" + _qvalue(params[name], precision)
        if name not in key and name in inits:
            key[name] = "c:" + format_const(numpy_helper.to_array(inits[name]), precision)
        return key.get(name, "?")

    for idx in _topological(g.node):
        n = g.node[idx]
        ins = [input_key(i) for i in n.input]
        if _is_commutative(n):
            ins.sort()
        text = f"{n.domain}::{n.op_type}{format_attrs(n, precision)}({'|'.join(ins)})"
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        for j, o in enumerate(n.output):
            if o:
                key[o] = f"{digest}.{j}"
    return key


def input_order(node: onnx.NodeProto, keys: dict[str, str] | None) -> list[int]:
    """The order in which a node's inputs are visited and printed: as written, except for
    commutative ops, whose inputs go by structural key (ties keep their written order)."""
    idx = list(range(len(node.input)))
    if keys is not None and _is_commutative(node):
        idx.sort(key=lambda i: (keys.get(node.input[i], "?"), i))
    return idx


def canonical_order(model: onnx.ModelProto, keys: dict[str, str] | None = None) -> list[int]:
    """Node indices: iterative DFS post-order from the graph outputs, then unreachable nodes in
    file order. Independent of names and of the file's order of independent nodes; with
    ``keys`` (``structural_keys``) also of the written order of commutative inputs."""
    nodes = model.graph.node
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    done: set[int] = set()
    order: list[int] = []
    for out in model.graph.output:
        root = producer.get(out.name)
        if root is None or root in done:
            continue
        stack: list[tuple[int, int]] = [(root, 0)]
        on_stack = {root}
        while stack:
            idx, k = stack[-1]
            inputs = [nodes[idx].input[j] for j in input_order(nodes[idx], keys)]
            while k < len(inputs):
                p = producer.get(inputs[k]) if inputs[k] else None
                k += 1
                if p is not None and p not in done and p not in on_stack:
                    stack[-1] = (idx, k)
                    stack.append((p, 0))
                    on_stack.add(p)
                    break
            else:
                stack.pop()
                on_stack.discard(idx)
                done.add(idx)
                order.append(idx)
    order.extend(i for i in range(len(nodes)) if i not in done)
    return order


def structure_problems(model: onnx.ModelProto) -> list[str]:
    """Why the graph is not a valid DAG (dangling inputs such as a missing initializer, nodes on a
    cycle, outputs nothing produces), one line each; [] for a valid graph. The dump still prints
    such a graph (``?name`` for a dangling tensor, cycle nodes last in file order), but its order
    is then not canonical, so the command warns."""
    g = model.graph
    nodes = list(g.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    available = producer.keys() | {t.name for t in g.initializer} | {i.name for i in g.input}
    problems: list[str] = []
    dangling = sorted({x for n in nodes for x in n.input if x and x not in available})
    if dangling:
        shown = ", ".join(dangling[:3]) + (
            f" and {len(dangling) - 3} more" if len(dangling) > 3 else ""
        )
        problems.append(
            f"{len(dangling)} tensor(s) read but not produced by any node, initializer or graph "
            f"input (missing initializers?): {shown}"
        )
    order, _ = kahn_order(nodes, producer)
    if len(order) < len(nodes):
        placed = set(order)
        stuck = [nodes[i].name or f"#{i}" for i in range(len(nodes)) if i not in placed]
        shown = ", ".join(stuck[:3]) + (f" and {len(stuck) - 3} more" if len(stuck) > 3 else "")
        problems.append(
            f"{len(stuck)} node(s) on or behind a cycle (dumped last, in file order): {shown}"
        )
    missing = [o.name for o in g.output if o.name not in available]
    if missing:
        problems.append(f"graph output(s) not produced: {', '.join(missing[:3])}")
    return problems


def dump_model(model: onnx.ModelProto, *, precision: int = 6, names: bool = False) -> str:
    """The canonical text. ``names=True`` appends each node's original name as a comment."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    params, hidden = qdq_param_values(model)
    keys = structural_keys(model, params, precision)
    order = [i for i in canonical_order(model, keys) if i not in hidden]
    tname: dict[str, str] = {}
    seen_const: set[str] = set()
    n_const = 0
    lines = [
        f"# qdqopt dump v{FORMAT_VERSION}: scales rounded to {precision} significant digits; "
        "nodes/tensors renumbered in canonical topological order"
        + ("; original names in comments" if names else ""),
        "opset "
        + ", ".join(
            f"{o.domain or 'ai.onnx'}={o.version}"
            for o in sorted(model.opset_import, key=lambda o: o.domain)
        ),
    ]
    graph_inputs = [i for i in g.input if i.name not in inits]
    for k, vi in enumerate(graph_inputs):
        tname[vi.name] = f"in{k}"
        lines.append(f"input in{k}: {_type(vi)}" + (f"  # {vi.name}" if names else ""))

    def ref(name: str) -> str:
        nonlocal n_const
        if not name:
            return "-"
        if name in tname:
            return tname[name]
        if name in inits:
            label = f"c{n_const}"
            n_const += 1
            tname[name] = label
            seen_const.add(name)
            return f"{label}={format_const(numpy_helper.to_array(inits[name]), precision)}"
        return f"?{name}"  # dangling reference (invalid model): keep it visible

    for pos, idx in enumerate(order):
        node = g.node[idx]
        for k, o in enumerate(node.output):
            if o:
                tname[o] = f"t{pos}" if len(node.output) == 1 else f"t{pos}.{k}"
        op = node.op_type if not node.domain else f"{node.domain}::{node.op_type}"
        if node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx"):
            args = ref(node.input[0]) if node.input else "-"
            extra = _qdq_params(node, params, precision, ref)
            attrs = format_attrs(node, precision, skip=("axis",) if "axis=" in extra else ())
        else:
            args = ", ".join(ref(node.input[j]) for j in input_order(node, keys))
            extra = ""
            attrs = format_attrs(node, precision)
        outs = ", ".join(tname.get(o, "-") for o in node.output)
        text = f"n{pos} {op}({args}){extra}{attrs} -> {outs}"
        if names:
            text += f"  # {node.name}"
        lines.append(text)
    for k, vi in enumerate(g.output):
        lines.append(
            f"output out{k} = {tname.get(vi.name, '?' + vi.name)}: {_type(vi)}"
            + (f"  # {vi.name}" if names else "")
        )
    return "\n".join(lines) + "\n"


def _qdq_params(node: onnx.NodeProto, params: dict, precision: int, ref) -> str:
    """`` scale=... zp=...`` for a Q/DQ with constant parameters; references otherwise."""
    parts = []
    for label, pos in (("scale", 1), ("zp", 2)):
        if len(node.input) <= pos or not node.input[pos]:
            continue
        name = node.input[pos]
        if name in params:
            parts.append(f"{label}={_qvalue(params[name], precision)}")
        else:
            parts.append(f"{label}={ref(name)}")
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    scale = params.get(node.input[1]) if len(node.input) > 1 else None
    if scale is not None and scale.size > 1:
        parts.append(f"axis={1 if axis is None else axis}")
    return (" " + " ".join(parts)) if parts else ""


def _qvalue(value: np.ndarray, precision: int) -> str:
    dt = value.dtype.name
    if value.size == 0:
        return f"{dt}[0]"  # invalid for Q/DQ, but dump shows any graph as it is
    if value.size == 1:
        v = value.reshape(-1)[0]
        return (
            f"{_num(v, precision)}:{dt}"
            if not np.issubdtype(value.dtype, np.floating)
            else _num(v, precision)
        )
    flat = value.reshape(-1)
    if not np.issubdtype(value.dtype, np.floating) and np.all(flat == flat[0]):
        return f"{_num(flat[0], precision)}:{dt}[{value.size}]"
    rounded = [_num(v, precision) for v in flat]
    digest = hashlib.sha1(",".join(rounded).encode()).hexdigest()[:8]
    return f"{dt}[{value.size}](min={_num(flat.min(), precision)},max={_num(flat.max(), precision)})#{digest}"


def format_const(value: np.ndarray, precision: int) -> str:
    """A constant as dump shows it: dtype, shape and the values (small) or a short digest."""
    shape = "x".join(str(d) for d in value.shape)
    if value.size <= SMALL_CONST:
        vals = ",".join(_num(v, precision) for v in value.reshape(-1))
        return f"{value.dtype.name}[{shape}]({vals})"
    digest = hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()[:8]
    return f"{value.dtype.name}[{shape}]#{digest}"


def _num(v, precision: int) -> str:
    if isinstance(v, (np.floating, float)):
        return f"{float(v):.{precision}g}"
    if isinstance(v, (np.bool_, bool)):
        return str(bool(v)).lower()
    if isinstance(v, (np.integer, int)):
        return str(int(v))
    return str(v)


def format_attrs(node: onnx.NodeProto, precision: int, skip: tuple[str, ...] = ()) -> str:
    """A node's attributes as dump shows them (sorted, `` {name=value ...}``; diff shows the same)."""
    items = []
    for a in sorted(node.attribute, key=lambda a: a.name):
        if a.name in skip:
            continue
        items.append(f"{a.name}={_attr_value(a, precision)}")
    return (" {" + " ".join(items) + "}") if items else ""


def _attr_value(a: onnx.AttributeProto, precision: int) -> str:
    T = onnx.AttributeProto
    if a.type == T.FLOAT:
        return _num(np.float32(a.f), precision)
    if a.type == T.INT:
        return str(a.i)
    if a.type == T.STRING:
        return repr(a.s.decode("utf-8", "replace"))
    if a.type == T.FLOATS:
        return "[" + ",".join(_num(np.float32(f), precision) for f in a.floats) + "]"
    if a.type == T.INTS:
        return "[" + ",".join(str(i) for i in a.ints) + "]"
    if a.type == T.STRINGS:
        return "[" + ",".join(repr(s.decode("utf-8", "replace")) for s in a.strings) + "]"
    if a.type == T.TENSOR:
        return format_const(numpy_helper.to_array(a.t), precision)
    if a.type == T.GRAPH:
        return f"<graph {len(a.g.node)} nodes>"
    if a.type == T.GRAPHS:
        return "[" + ",".join(f"<graph {len(g.node)} nodes>" for g in a.graphs) + "]"
    return f"<{T.AttributeType.Name(a.type).lower()}>"


def _type(vi: onnx.ValueInfoProto) -> str:
    t = vi.type
    if not t.HasField("tensor_type"):
        return "?"
    tt = t.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "?"
    if not tt.HasField("shape"):
        return f"{dtype}[?]"
    dims = [
        str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim
    ]
    return f"{dtype}[{','.join(dims)}]"
