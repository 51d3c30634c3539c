"""QGraph: a Q/DQ-aware index over an ONNX graph, and the one mutation API rules use.

onnx-graphsurgeon is the single source of truth: its tensors know their producer
(``tensor.inputs``) and consumers (``tensor.outputs``), so both lookups are O(1) and stay
consistent through edits. On top of that QGraph keeps a name index, an iterative topological
order (with an op-type index) and a networkx DiGraph for walks (ancestors, descendants, paths),
all rebuilt lazily after a mutation. Nothing here recurses over the graph, so 100k-node chains
are fine, and no edit is worse than O(degree): nodes are removed by identity (graph-surgeon's
``Node.__eq__`` compares by value) and the node list is compacted lazily in one pass. The engine
can ask which nodes were next to an edit (``start_tracking``/``take_touched``) to revisit only
those. Edit through these methods, not ``graph.gs`` directly, so the indexes stay right.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from .gcutil import paused_gc
from .protos import DEQUANTIZE, QUANTIZE, is_float_dtype, small_tensor_array

# graph-surgeon warns on every bfloat16 constant read ("will be casted to a supported data type",
# hundreds of lines on a ModelOpt bf16 graph) and about its optional colour module: QGraph keeps
# the graph's float type itself (``float_constant``; bf16 graphs export bf16, tested), so those
# lines are noise to users. Its errors still print.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

Node = gs.Node
Tensor = gs.Tensor


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one Q or DQ node (constants resolved to numpy)."""

    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int | None
    dtype: int  # onnx.TensorProto element type of the quantized side

    @property
    def per_axis(self) -> bool:
        return self.scale.size > 1

    def same_as(self, other: QParams) -> bool:
        """Bit-equal parameters (the condition for merging two quantizers exactly)."""
        return (
            self.dtype == other.dtype
            and self.scale.shape == other.scale.shape
            and np.array_equal(self.scale, other.scale)
            and _zp_equal(self.zero_point, other.zero_point)
            and (not self.per_axis or self.axis == other.axis)
        )


def _zp_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is not None and b is not None and a.shape == b.shape:
        return bool(np.array_equal(a, b))
    a_ = np.zeros(1) if a is None else a
    b_ = np.zeros(1) if b is None else b
    return np.array_equal(
        np.broadcast_to(a_, max(a_.shape, b_.shape)), np.broadcast_to(b_, max(a_.shape, b_.shape))
    )


class QGraph:
    """Index and mutation API over a graph-surgeon graph; see the module docstring."""

    def __init__(self, graph: gs.Graph, model: onnx.ModelProto | None = None) -> None:
        self.gs = graph
        self._template = model  # keeps opsets, metadata, producer info for export
        self._names = itertools.count()
        self._dirty = True
        self._node_by_name: dict[str, Node] = {}
        self._tensor_by_name: dict[str, Tensor] = {}
        self._order: list[Node] = []
        self._pos: dict[int, int] = {}
        self._by_op: dict[str, list[Node]] = {}
        self._nx: nx.DiGraph | None = None
        # Names ever used: unique_name() must not force a full re-index after every edit.
        self._used_names: set[str] | None = None
        # Removal is O(1): ids of removed nodes; gs.nodes is compacted lazily in one pass.
        self._removed: set[int] = set()
        self._members: set[int] = {id(n) for n in graph.nodes}
        # Nodes near an edit since start_tracking() (None: not tracking); lets the engine
        # revisit only the neighbourhood of the last iteration's edits.
        self._touched: dict[int, Node] | None = None
        self._qparams_cache: dict[int, tuple[tuple, QParams]] = {}
        self.read_only = False  # set by the engine during dry-run: edits then raise
        self._float_type: np.dtype | None = None

    # ------------------------------------------------------------------ construction / export
    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> QGraph:
        """Import a (validated) model. Initializers stay lazy, so large weights are not copied."""
        with paused_gc():
            return cls(gs.import_onnx(model), model)

    def to_model(self) -> onnx.ModelProto:
        """Export in topological order with the input model's opsets and metadata."""
        self.gs.nodes = list(self.topo_nodes())
        with paused_gc(), _single_copy_weights(self.gs) as fill:
            exported = gs.export_onnx(self.gs, do_type_check=False)
            fill(exported)
        if self._template is not None:
            exported.ClearField("opset_import")
            exported.opset_import.extend(self._template.opset_import)
            for field in (
                "ir_version",
                "producer_name",
                "producer_version",
                "domain",
                "model_version",
                "doc_string",
            ):
                setattr(exported, field, getattr(self._template, field))
            del exported.metadata_props[:]
            exported.metadata_props.extend(self._template.metadata_props)
        return exported

    @property
    def opset(self) -> int:
        return int(self.gs.opset)

    # ------------------------------------------------------------------ float type
    @property
    def float_type(self) -> np.dtype:
        """The float type the graph computes in (fp32, fp16 or bf16): that of its Q/DQ scales,
        else of its first float graph input, else float32. Every constant a rewrite writes
        (scales, biases, folded weights) uses it, or ONNX type inference rejects the model."""
        if self._float_type is None:
            self._float_type = _detect_float_type(self.gs)
        return self._float_type

    def to_float_type(self, value: np.ndarray | float) -> np.ndarray:
        """``value`` cast to the graph's float type (a no-op for fp32 graphs and fp32 values)."""
        arr = np.asarray(value)
        return arr if arr.dtype == self.float_type else arr.astype(self.float_type)

    def float_constant(self, prefix: str, value: np.ndarray | float) -> gs.Constant:
        """A new constant (uniquely named from ``prefix``) in the graph's float type."""
        return gs.Constant(self.unique_name(prefix), self.to_float_type(value))

    # ------------------------------------------------------------------ index
    def _compact(self) -> None:
        if self._removed:
            removed = self._removed
            self.gs.nodes = [n for n in self.gs.nodes if id(n) not in removed]
            self._removed = set()

    def _refresh(self) -> None:
        if not self._dirty:
            return
        self._compact()
        self._members = {id(n) for n in self.gs.nodes}
        self._names_dirty = True  # the name indexes are rebuilt only when asked for
        self._order = _toposort(self.gs.nodes)
        self._pos = {id(n): i for i, n in enumerate(self._order)}
        by_op: dict[str, list[Node]] = {}
        for n in self._order:
            by_op.setdefault(n.op, []).append(n)
        self._by_op = by_op
        self._nx = None
        self._dirty = False

    def _refresh_names(self) -> None:
        self._refresh()
        if not getattr(self, "_names_dirty", True):
            return
        self._node_by_name = {}
        self._tensor_by_name = {}
        for node in self.gs.nodes:
            if node.name:
                self._node_by_name.setdefault(node.name, node)
            for t in itertools.chain(node.inputs, node.outputs):
                if t.name:
                    self._tensor_by_name.setdefault(t.name, t)
        for t in itertools.chain(self.gs.inputs, self.gs.outputs):
            self._tensor_by_name.setdefault(t.name, t)
        self._names_dirty = False

    def start_tracking(self) -> None:
        """Begin recording the nodes next to every edit made through this API."""
        self._touched = {}

    def take_touched(self) -> list[Node]:
        """Nodes recorded since ``start_tracking()`` that are still in the graph; stops tracking."""
        touched = self._touched or {}
        self._touched = None
        return [n for i, n in touched.items() if i in self._members]

    def _mark(self, tensor: Tensor) -> None:
        """Record the producer and every consumer of ``tensor`` as touched."""
        if self._touched is None:
            return
        for n in tensor.inputs:
            self._touched[id(n)] = n
        for n in tensor.outputs:
            self._touched[id(n)] = n

    def touch(self) -> None:
        """Mark derived indexes stale; every mutation method calls this."""
        if self.read_only:
            raise RuntimeError("graph edited during a dry run (lint): actions must only report")
        self._dirty = True

    @property
    def nodes(self) -> list[Node]:
        self._compact()
        return self.gs.nodes

    def contains(self, node: Node) -> bool:
        """Is ``node`` (by identity) still part of the graph? O(1)."""
        return id(node) in self._members

    def position(self, node: Node) -> int:
        """Index of ``node`` in the last computed topological order, for stable tie-breaks.

        Does not re-index after edits when ``node`` was already indexed (its old position still
        orders it correctly against nodes that existed then), so rules can call it in a loop."""
        i = self._pos.get(id(node))
        if i is None or i >= len(self._order) or self._order[i] is not node:
            self._refresh()
            i = self._pos[id(node)]
        return i

    def node(self, name: str) -> Node:
        self._refresh_names()
        return self._node_by_name[name]

    def tensor(self, name: str) -> Tensor:
        self._refresh_names()
        return self._tensor_by_name[name]

    def has_tensor(self, name: str) -> bool:
        self._refresh_names()
        return name in self._tensor_by_name

    def topo_nodes(self) -> list[Node]:
        """Nodes in a deterministic topological order (ties keep file order)."""
        self._refresh()
        return list(self._order)

    def nx_graph(self) -> nx.DiGraph:
        """A DiGraph over node ids (``id(node)``, attribute ``node``) for ancestors/paths."""
        self._refresh()
        if self._nx is None:
            g = nx.DiGraph()
            for n in self._order:
                g.add_node(id(n), node=n)
            for n in self._order:
                for t in n.outputs:
                    for c in t.outputs:
                        g.add_edge(id(n), id(c))
            self._nx = g
        return self._nx

    def ancestors(self, node: Node) -> list[Node]:
        g = self.nx_graph()
        return [g.nodes[i]["node"] for i in nx.ancestors(g, id(node))]

    def descendants(self, node: Node) -> list[Node]:
        g = self.nx_graph()
        return [g.nodes[i]["node"] for i in nx.descendants(g, id(node))]

    @staticmethod
    def producer(tensor: Tensor) -> Node | None:
        return tensor.inputs[0] if tensor.inputs else None

    @staticmethod
    def consumers(tensor: Tensor) -> list[Node]:
        return list(tensor.outputs)

    def is_graph_output(self, tensor: Tensor) -> bool:
        return any(t is tensor for t in self.gs.outputs)

    def nodes_of(self, *ops: str) -> Iterator[Node]:
        """Nodes of the given op types, in topological order (indexed: O(matches))."""
        self._refresh()
        if len(ops) == 1:
            return iter(list(self._by_op.get(ops[0], ())))
        found = [n for op in set(ops) for n in self._by_op.get(op, ())]
        found.sort(key=lambda n: self._pos[id(n)])
        return iter(found)

    # ------------------------------------------------------------------ Q/DQ helpers
    @staticmethod
    def is_q(node: Node | None) -> bool:
        return node is not None and node.op == QUANTIZE

    @staticmethod
    def is_dq(node: Node | None) -> bool:
        return node is not None and node.op == DEQUANTIZE

    def qparams(self, node: Node) -> QParams:
        """Scale, zero point, axis and quantized dtype of a Q or DQ node.

        Cached per node; the cache entry is used only while the node still reads the same
        input, scale and zero-point tensor objects holding the same value objects and has the
        same attributes (``set_qparams`` or assigning ``Constant.values`` invalidates it)."""
        key = _qparams_key(node)
        hit = self._qparams_cache.get(id(node))
        if hit is not None and key is not None and _same_key(hit[0], key):
            return hit[1]
        params = self._qparams(node)
        key = _qparams_key(node)  # after loading: lazy values are replaced by arrays
        if key is not None:
            self._qparams_cache[id(node)] = (key, params)
        return params

    def _qparams(self, node: Node) -> QParams:
        scale = constant_value(node.inputs[1])
        if scale is None:
            raise ValueError(f"{node.op} '{node.name}' has a non-constant scale")
        zp = (
            constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        )
        if zp is not None:
            dtype = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
        elif node.op == QUANTIZE and "output_dtype" in node.attrs:
            dtype = int(node.attrs["output_dtype"])
        else:
            dtype = onnx.TensorProto.UINT8 if node.op == QUANTIZE else _dq_input_dtype(node)
        axis = node.attrs.get("axis", 1) if np.asarray(scale).size > 1 else None
        if axis is not None:
            rank = _rank(node.inputs[0])
            if rank is not None and axis < 0:
                axis += rank
        return QParams(np.asarray(scale, dtype=np.float32), zp, axis, dtype)

    def dq_producing(self, tensor: Tensor) -> Node | None:
        """The DequantizeLinear that produces ``tensor``, if any."""
        p = self.producer(tensor)
        return p if self.is_dq(p) else None

    def qdq_pair_on(self, tensor: Tensor) -> tuple[Node, Node] | None:
        """(Q, DQ) when ``tensor`` is produced by DQ whose input is produced by Q."""
        dq = self.dq_producing(tensor)
        if dq is None:
            return None
        q = self.producer(dq.inputs[0])
        return (q, dq) if self.is_q(q) else None

    def quantizers_of(self, tensor: Tensor) -> list[Node]:
        """Q nodes reading ``tensor`` directly (the quantizers TensorRT must merge into one)."""
        return [c for c in tensor.outputs if self.is_q(c)]

    # ------------------------------------------------------------------ mutation API
    def unique_name(self, prefix: str) -> str:
        """A fresh node/tensor name, deterministic for a given graph and edit sequence."""
        if self._used_names is None:
            used: set[str] = set()
            for node in self.nodes:
                used.add(node.name)
                for t in itertools.chain(node.inputs, node.outputs):
                    used.add(t.name)
            used.update(t.name for t in itertools.chain(self.gs.inputs, self.gs.outputs))
            self._used_names = used
        while True:
            name = f"{prefix}_qdqopt{next(self._names)}"
            if name not in self._used_names:
                self._used_names.add(name)
                return name

    def constant(self, prefix: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self.unique_name(prefix), np.asarray(value))

    def add_node(
        self,
        op: str,
        inputs: list[Tensor],
        outputs: list[Tensor],
        name: str,
        attrs: dict | None = None,
    ) -> Node:
        node = gs.Node(op=op, name=name, attrs=attrs or {}, inputs=inputs, outputs=outputs)
        for t in itertools.chain(inputs, outputs):
            self._mark(t)
        self.gs.nodes.append(node)
        self._members.add(id(node))
        if self._used_names is not None:
            self._used_names.add(name)
            self._used_names.update(t.name for t in outputs)
        self.touch()
        return node

    def set_input(self, node: Node, index: int, tensor: Tensor) -> None:
        """Point one input of one node at ``tensor`` (other consumers are untouched).

        A new float32 constant is cast to the graph's float type (fp16/bf16 graphs), so a
        rewrite that computed a weight or bias in float32 still writes a valid graph."""
        if (
            isinstance(tensor, gs.Constant)
            and not tensor.inputs
            and not tensor.outputs
            and not isinstance(tensor._values, LazyValues)
            and np.asarray(tensor.values).dtype == np.float32
            and self.float_type != np.float32
        ):
            tensor.values = self.to_float_type(tensor.values)
        self._mark(node.inputs[index])
        node.inputs[index] = tensor
        self._mark(tensor)
        self.touch()

    def replace_uses(self, old: Tensor, new: Tensor, only: Iterable[Node] | None = None) -> None:
        """Rewire consumers of ``old`` (all, or ``only`` those) to read ``new``.
        Graph outputs keep their name: an Identity carries ``new`` into the old output tensor."""
        targets = list(old.outputs) if only is None else list(only)
        self._mark(old)
        self._mark(new)
        for consumer in targets:
            for i, t in enumerate(consumer.inputs):
                if t is old:
                    consumer.inputs[i] = new
        if only is None and self.is_graph_output(old):
            producer = self.producer(old)
            if producer is not None:
                _remove_by_identity(producer.outputs, old)
            self.add_node("Identity", [new], [old], self.unique_name(f"{old.name}_keep"))
        self.touch()

    def absorb(self, node: Node, absorbed: Node) -> None:
        """Delete ``absorbed``, a single-output node that reads ``node``'s first output (its only
        reader), and let ``node`` produce ``absorbed``'s output tensor: a node that now computes
        what the two did (a conv with a BatchNormalization folded in) keeps the name of the
        value it computes, so data keyed by tensor name (calibration ranges) stays true."""
        old, kept = node.outputs[0], absorbed.outputs[0]
        if (
            len(absorbed.outputs) != 1
            or list(old.outputs) != [absorbed]
            or self.is_graph_output(old)
        ):
            raise ValueError(f"'{absorbed.name}' is not the only reader of '{node.name}'")
        self.remove_node(absorbed)
        self._mark(old)
        _remove_by_identity(node.outputs, old)
        node.outputs.insert(0, kept)
        self._mark(kept)
        self.touch()

    def remove_node(self, node: Node) -> None:
        """Detach and delete a node (its outputs must be unused or rewired first). O(degree).

        Lists are edited by identity: graph-surgeon's ``Node.__eq__`` compares by value, so
        ``list.remove`` could drop an equal twin and costs a deep comparison per element."""
        for t in itertools.chain(node.inputs, node.outputs):
            self._mark(t)
        _detach(node)
        self._members.discard(id(node))
        self._removed.add(id(node))
        self.touch()

    def insert_qdq(
        self,
        tensor: Tensor,
        scale: np.ndarray,
        zero_point: np.ndarray | None = None,
        axis: int | None = None,
        consumers: Iterable[Node] | None = None,
        name: str | None = None,
    ) -> tuple[Node, Node, Tensor]:
        """Insert ``tensor -> Q -> DQ`` and point ``consumers`` (default: all) at the DQ output."""
        base = name or tensor.name
        targets = list(tensor.outputs if consumers is None else consumers)
        zp = np.zeros_like(np.asarray(scale), dtype=np.int8) if zero_point is None else zero_point
        s_c = self.float_constant(f"{base}_scale", np.asarray(scale, dtype=np.float32))
        z_c = self.constant(f"{base}_zero_point", zp)
        q_out = gs.Variable(self.unique_name(f"{base}_quantized"), dtype=np.asarray(zp).dtype)
        dq_out = gs.Variable(
            self.unique_name(f"{base}_dequantized"), dtype=tensor.dtype, shape=tensor.shape
        )
        attrs = {} if axis is None else {"axis": int(axis)}
        q = self.add_node(
            QUANTIZE, [tensor, s_c, z_c], [q_out], self.unique_name(f"{base}_QuantizeLinear"), attrs
        )
        dq = self.add_node(
            DEQUANTIZE,
            [q_out, s_c, z_c],
            [dq_out],
            self.unique_name(f"{base}_DequantizeLinear"),
            dict(attrs),
        )
        self.replace_uses(tensor, dq_out, only=targets)
        return q, dq, dq_out

    def bypass_qdq(self, q: Node, dq: Node, consumers: Iterable[Node] | None = None) -> None:
        """Make ``consumers`` of the DQ (default: all) read the Q's input; drop nodes left unused."""
        src = q.inputs[0]
        dq_out = dq.outputs[0]
        self.replace_uses(dq_out, src, only=None if consumers is None else list(consumers))
        self.drop_if_unused(dq)
        self.drop_if_unused(q)

    def drop_if_unused(self, node: Node) -> bool:
        """Delete ``node`` when no output is consumed or is a graph output."""
        if not self.contains(node):
            return False
        if any(t.outputs or self.is_graph_output(t) for t in node.outputs):
            return False
        self.remove_node(node)
        return True

    def set_qparams(self, node: Node, scale: np.ndarray) -> None:
        """Give a Q or DQ node a new scale constant (its own, so shared constants are safe)."""
        self._mark(node.inputs[0])
        self._mark(node.outputs[0])
        node.inputs[1] = self.float_constant(
            f"{node.name}_scale", np.asarray(scale, dtype=np.float32)
        )
        self.touch()

    def set_weight_qparams(
        self,
        nodes: list[Node],
        scale: np.ndarray,
        axis: int | None,
        name: str,
        zero_point: np.ndarray | None = None,
    ) -> None:
        """Give a weight's DQ (and its Q, pair form) one new scale and zero point of the scale's
        shape (default int8 zeros; its type is the weight's), on ``axis`` (None: per-tensor);
        constants are named after ``name``."""
        s_c = self.float_constant(f"{name}_scale", scale)
        zp = np.zeros(np.shape(scale), np.int8) if zero_point is None else zero_point
        z_c = gs.Constant(self.unique_name(f"{name}_zero_point"), np.asarray(zp))
        for n in nodes:
            n.inputs[1] = s_c
            if len(n.inputs) > 2:
                n.inputs[2] = z_c
            else:
                n.inputs.append(z_c)
            n.attrs.pop("axis", None)
            if axis is not None:
                n.attrs["axis"] = int(axis)
        self.touch()

    def cleanup(self) -> int:
        """Remove nodes that do not contribute to a graph output (iteratively). Returns count."""
        live: set[int] = set()
        todo = deque(p for t in self.gs.outputs if (p := self.producer(t)) is not None)
        while todo:
            n = todo.pop()
            if id(n) in live:
                continue
            live.add(id(n))
            for t in n.inputs:
                p = self.producer(t)
                if p is not None and id(p) not in live:
                    todo.append(p)
        dead = [n for n in self.nodes if id(n) not in live]
        for n in dead:
            for t in itertools.chain(n.inputs, n.outputs):
                self._mark(t)
            _detach(n)
            self._members.discard(id(n))
        if dead:
            self.gs.nodes = [n for n in self.gs.nodes if id(n) in live]
            self.touch()
        return len(dead)


# ---------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _single_copy_weights(graph: gs.Graph) -> Iterator[Callable[[onnx.ModelProto], None]]:
    """Export untouched initializers with one copy instead of two.

    gs.export_onnx copies every initializer twice (make_graph, then make_model's CopyFrom), which
    puts peak memory at ~3x the model size for multi-GB models. Constants still holding the
    TensorProto they were imported from (graph-surgeon's LazyValues) are exported as empty shells;
    the yielded ``fill`` then copies each original proto into the exported model once."""
    swapped: dict[str, tuple[gs.Constant, LazyValues]] = {}
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and _sub_byte(t._values):
            # graph-surgeon writes a loaded int4/uint4 array one byte per element (a corrupt
            # initializer); ONNX's from_array packs two per byte
            t._values = LazyValues(numpy_helper.from_array(t._values, t.name))
        if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues):
            src = t._values.tensor
            if src.HasField("raw_data"):
                shell = onnx.TensorProto(name=src.name, data_type=src.data_type, dims=src.dims)
                swapped[t.name] = (t, t._values)
                t._values = LazyValues(shell)

    def fill(model: onnx.ModelProto) -> None:
        for init in model.graph.initializer:
            if init.name in swapped:
                original = swapped[init.name][1].tensor
                init.CopyFrom(original)
                init.name = swapped[init.name][0].name

    try:
        yield fill
    finally:
        for t, values in swapped.values():
            t._values = values


def _sub_byte(values: object) -> bool:
    """A loaded array of a 4-bit type (ONNX's ml_dtypes int4, uint4, float4_e2m1fn)."""
    return (
        isinstance(values, np.ndarray)
        and values.dtype.itemsize == 1
        and (values.dtype.name in ("int4", "uint4", "float4_e2m1fn"))
    )


def module_path(name: str) -> str:
    """``/model.105/m.0/Conv`` -> ``model.105.m.0.Conv``: module paths as the seed's regexes see
    them (TorchScript exports scope node names with slashes)."""
    return name.strip("/").replace("/", ".")


def name_matches(name: str | None, patterns: Iterable[re.Pattern]) -> bool:
    """True when a node name, or its module-path form, matches one of the regexes."""
    if not name:
        return False
    forms = (name, module_path(name))
    return any(p.search(f) for p in patterns for f in forms)


_LazyValues = gs.ir.tensor.LazyValues

_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
}


def _bfloat16() -> np.dtype:
    import ml_dtypes  # onnx's own dependency for bfloat16 arrays

    return np.dtype(ml_dtypes.bfloat16)


def _tensor_float_type(t: Tensor) -> np.dtype | None:
    if isinstance(t, gs.Constant):
        lazy = t._values
        dt = lazy.tensor.data_type if isinstance(lazy, _LazyValues) else None
        if dt == onnx.TensorProto.BFLOAT16:
            return _bfloat16()
        if dt is not None:
            return _FLOAT_TYPES.get(dt)
        kind = np.asarray(t.values).dtype
        return kind if is_float_dtype(kind) else None
    if t.dtype is None:
        return None
    try:
        dt = np.dtype(t.dtype)
    except TypeError:
        return None
    return dt if is_float_dtype(dt) else None


def _detect_float_type(graph: gs.Graph) -> np.dtype:
    """See ``QGraph.float_type``: the first Q/DQ scale's type, else the first float input's."""
    for n in graph.nodes:
        if n.op in (QUANTIZE, DEQUANTIZE) and len(n.inputs) > 1:
            found = _tensor_float_type(n.inputs[1])
            if found is not None:
                return found
    for t in graph.inputs:
        found = _tensor_float_type(t)
        if found is not None:
            return found
    return np.dtype(np.float32)


def _qparams_key(node: Node) -> tuple | None:
    """What a node's QParams depend on, by identity; None when not safely cacheable."""
    ins = node.inputs
    if len(ins) < 2 or not isinstance(ins[1], gs.Constant):
        return None
    zp = ins[2] if len(ins) > 2 and ins[2].name else None
    if zp is not None and not isinstance(zp, gs.Constant):
        return None
    if zp is None and node.op == DEQUANTIZE:
        return None  # its dtype comes from the producer of its input: not cached
    objects = (node, ins[0], ins[1], ins[1]._values, zp, None if zp is None else zp._values)
    return objects, (node.attrs.get("axis"), node.attrs.get("output_dtype"))


def _same_key(a: tuple, b: tuple) -> bool:
    """Identity for the objects (never ``==``: nodes compare by value, arrays elementwise)."""
    return all(x is y for x, y in zip(a[0], b[0], strict=True)) and a[1] == b[1]


def _remove_by_identity(items: list, obj: object) -> None:
    """Remove ``obj`` from a graph-surgeon SynchronizedList by identity (keeps both sides in sync)."""
    for i, x in enumerate(items):
        if x is obj:
            del items[i]
            return


def _detach(node: Node) -> None:
    """Unhook a node from its tensors by identity, without graph-surgeon's value comparisons."""
    for t in node.inputs:
        _unlink(t.outputs, node)
    list.clear(node.inputs)
    for t in node.outputs:
        _unlink(t.inputs, node)
    list.clear(node.outputs)


def _unlink(items: list, obj: object) -> None:
    """Drop ``obj`` from one side only (plain list deletion: the caller clears the other side)."""
    for i, x in enumerate(items):
        if x is obj:
            list.__delitem__(items, i)
            return


def constant_value(tensor: Tensor) -> np.ndarray | None:
    """Numpy value of an initializer or of a ``Constant`` node's output, else None."""
    if isinstance(tensor, gs.Constant):
        lazy = tensor._values
        if isinstance(lazy, _LazyValues):
            fast = small_tensor_array(lazy.tensor)
            if fast is not None:
                tensor.values = fast  # what graph-surgeon's own lazy load would store
                return fast
        return np.asarray(tensor.values)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is not None and producer.op == "Constant":
        value = producer.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        if value is not None:
            return np.asarray(value)
        for key in ("value_float", "value_floats", "value_int", "value_ints"):
            if key in producer.attrs:
                return np.asarray(producer.attrs[key])
    return None


def _dq_input_dtype(dq: Node) -> int:
    src = dq.inputs[0]
    if isinstance(src, gs.Constant):
        return onnx.helper.np_dtype_to_tensor_dtype(np.asarray(src.values).dtype)
    q = src.inputs[0] if src.inputs else None
    if q is not None and q.op == QUANTIZE and len(q.inputs) > 2:
        zp = constant_value(q.inputs[2])
        if zp is not None:
            return onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
    return onnx.TensorProto.UINT8


def _rank(tensor: Tensor) -> int | None:
    if isinstance(tensor, gs.Constant):
        lazy = tensor._values
        if isinstance(lazy, gs.ir.tensor.LazyValues):
            fast = small_tensor_array(lazy.tensor)
            if fast is not None:
                tensor.values = fast  # what graph-surgeon's own lazy load would store
                return fast.ndim
        return np.asarray(tensor.values).ndim
    return len(tensor.shape) if tensor.shape is not None else None


def _toposort(nodes: list[Node]) -> list[Node]:
    """Kahn's algorithm, stable by original position; raises ValueError on a cycle."""
    with paused_gc():
        return _kahn(nodes)


def _already_sorted(nodes: list[Node], get) -> bool:
    for i, n in enumerate(nodes):
        for t in n.inputs:
            for p in t.inputs:
                j = get(id(p))
                if j is not None and j >= i:
                    return False
    return True


def _kahn(nodes: list[Node]) -> list[Node]:
    index = {id(n): i for i, n in enumerate(nodes)}
    get = index.get
    # Fast path: the list is usually topological already (ONNX files are, and most edits only
    # remove or rewire backwards). Kahn's min-index order then is the identity.
    if _already_sorted(nodes, get):
        return list(nodes)
    indeg = [0] * len(nodes)
    succ: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        seen: set[int] = set()
        for t in n.outputs:
            for c in t.outputs:
                j = get(id(c))
                if j is not None and j not in seen:
                    seen.add(j)
                    succ[i].append(j)
                    indeg[j] += 1
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    out: list[Node] = []
    while ready:
        i = heapq.heappop(ready)
        out.append(nodes[i])
        for s in succ[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready, s)
    if len(out) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if indeg[i] > 0)
        raise ValueError(f"graph has a cycle through node '{stuck.name}' ({stuck.op})")
    return out
