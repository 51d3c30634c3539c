"""Matrix multiplies as TensorRT sees them: weighted GEMMs and attention's batched matmuls.

Pure predicates (no graph edits) over the export forms the producers write (facts and sources in
``docs/transformers.md``):

- a weighted MatMul/Gemm whose weight is a constant, directly or behind a DequantizeLinear, possibly
  behind Transpose/Identity/Reshape between the DQ and the GEMM: pytorch-quantization exports
  ``nn.Linear`` as ``MatMul(DQ(Q(x)), Transpose(DQ(Q(W))))``, and TensorRT 10 still runs that as one
  INT8 GEMM;
- an activation x activation MatMul (attention's Q x K^T and softmax x V), which TensorRT runs in
  INT8 only when both inputs arrive through DQ.

Every walk is bounded (a few steps from one node), so a pass over all MatMuls stays linear. This
module imports only ``graph`` and ``commute`` so ``trt_patterns`` can build on it without a cycle.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .commute import is_const, is_int8_tensor
from .graph import Node, QGraph, Tensor, constant_value
from .ops import GEMM_OPS

# Ops that may sit between a weight's DQ and the GEMM input and still leave a constant weight
# (TensorRT folds them into the weights; ModelOpt's FP8 exporter pre-transposes them instead).
WEIGHT_PATH_OPS = frozenset({"Transpose", "Identity", "Reshape"})
MAX_WEIGHT_HOPS = 4

# Ops between BMM1 and the Softmax: the attention scale (Mul/Div), the mask (Add/Sub/Where) and
# head reshapes. Between the Softmax and BMM2: layout ops (YOLO11's C2PSA transposes the
# probabilities and feeds them as BMM2's second input) and dropout.
SCORE_OPS = frozenset(
    {"Mul", "Div", "Add", "Sub", "Where", "Reshape", "Transpose", "Cast", "Identity", "Squeeze"}
    | {"Unsqueeze", "Flatten"}
)
PROB_OPS = frozenset({"Transpose", "Reshape", "Cast", "Identity", "Dropout", "Flatten"})
MAX_ATTENTION_HOPS = 6
_MAX_VISITED = 32  # bound on the forward search from BMM1 (fan-out of the score tensor)


@dataclass(frozen=True)
class WeightPath:
    """How a GEMM's weight input is produced from a constant.

    ``dq`` is the weight DequantizeLinear (None for a float weight), ``q`` the QuantizeLinear of a
    float constant in pair form (None for an int8 initializer), ``through`` the Transpose/Identity/
    Reshape nodes from the DQ (or constant) to the GEMM input, in data-flow order."""

    source: Tensor
    dq: Node | None
    q: Node | None
    through: tuple[Node, ...]

    @property
    def quantized(self) -> bool:
        return self.dq is not None


def weight_path(graph: QGraph, t: Tensor, max_hops: int = MAX_WEIGHT_HOPS) -> WeightPath | None:
    """The constant weight behind ``t``: ``t`` itself constant, or reached backwards through at
    most ``max_hops`` Transpose/Identity/Reshape (constant shape) nodes and at most one DQ (whose
    input is a constant or a Q of a constant). None when any step reads an activation."""
    through: list[Node] = []
    while True:
        if is_const(t):
            return WeightPath(t, None, None, tuple(reversed(through)))
        p = graph.producer(t)
        if p is None:
            return None
        if graph.is_dq(p):
            src = p.inputs[0]
            if is_const(src):
                return WeightPath(src, p, None, tuple(reversed(through)))
            q = graph.producer(src)
            if graph.is_q(q) and is_const(q.inputs[0]):
                return WeightPath(q.inputs[0], p, q, tuple(reversed(through)))
            return None
        if p.op not in WEIGHT_PATH_OPS or len(through) == max_hops or not p.inputs:
            return None
        if p.op == "Reshape" and (len(p.inputs) < 2 or not is_const(p.inputs[1])):
            return None
        through.append(p)
        t = p.inputs[0]


@dataclass(frozen=True)
class WeightedMatMul:
    """A MatMul/Gemm with a constant weight: ``data`` is its activation input (input 0)."""

    node: Node
    data: Tensor
    weight: WeightPath


def weighted_matmul(graph: QGraph, node: Node | None) -> WeightedMatMul | None:
    """``node`` as a weighted GEMM: a MatMul or Gemm whose input 1 is a constant weight in any
    export form (see ``weight_path``) and whose input 0 is not. None otherwise, including for an
    activation x activation MatMul."""
    if node is None or node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    data = node.inputs[0]
    if weight_path(graph, data) is not None:
        return None  # constant x constant: a folding leftover, not a GEMM on activations
    path = weight_path(graph, node.inputs[1])
    return WeightedMatMul(node, data, path) if path is not None else None


def _rank(t: Tensor) -> int | None:
    shape = getattr(t, "shape", None)
    if shape is not None:
        return len(shape)
    value = constant_value(t)
    return None if value is None else value.ndim


def weight_output_axis(wm: WeightedMatMul) -> int | None:
    """The axis of the stored weight (the DQ's input) that holds the GEMM's output channels, where
    TensorRT wants per-channel weight scales: Gemm's B is [N, K] with transB and [K, N] without,
    MatMul's B is [..., K, N]; each Transpose on the path moves the axis. None when a Reshape on
    the path or an unknown rank hides it."""
    rank = _rank(wm.weight.source)
    if rank is None or any(n.op == "Reshape" for n in wm.weight.through):
        return None
    if wm.node.op == "Gemm":
        axis = 0 if wm.node.attrs.get("transB", 0) else 1
    else:
        axis = rank - 1
    for n in reversed(wm.weight.through):  # from the GEMM back to the DQ
        if n.op == "Transpose":
            perm = list(n.attrs.get("perm", range(rank - 1, -1, -1)))
            if len(perm) != rank:
                return None
            axis = perm[axis]  # output axis i of a Transpose reads its input axis perm[i]
    return axis


def is_activation_matmul(graph: QGraph, node: Node | None) -> bool:
    """A MatMul of two activations (attention's batched matmuls): neither input is a constant
    weight in any export form."""
    if node is None or node.op != "MatMul" or len(node.inputs) != 2:
        return False
    return all(weight_path(graph, t) is None for t in node.inputs)


def is_int8_matmul(graph: QGraph, node: Node) -> bool:
    """Both inputs arrive as INT8 (through DQ, possibly behind ops Q/DQ commute with): what
    TensorRT needs to run an activation x activation MatMul (or its fused attention) in INT8."""
    return len(node.inputs) == 2 and all(is_int8_tensor(graph, t) for t in node.inputs)


@dataclass(frozen=True)
class AttentionMatMul:
    """An attention batched matmul.

    ``role`` is ``"qk"`` (BMM1: its output reaches a Softmax) or ``"pv"`` (BMM2: input
    ``probs_input`` comes from a Softmax). ``between`` lists the non-Q/DQ ops between the matmul
    and the Softmax (BMM1: the scale, the mask, reshapes; BMM2: transposes, dropout)."""

    node: Node
    role: str
    softmax: Node
    between: tuple[Node, ...]
    probs_input: int | None = None

    @property
    def scaled_after(self) -> bool:
        """BMM1 whose scores are multiplied/divided by a constant after the matmul. TensorRT's
        fused attention wants Q or K scaled before BMM1 (docs/transformers.md)."""
        return self.role == "qk" and any(
            n.op in ("Mul", "Div") and any(is_const(t) for t in n.inputs) for n in self.between
        )


def _skip_qdq_back(graph: QGraph, t: Tensor) -> Tensor:
    """The tensor before a Q -> DQ pair that produces ``t`` (``t`` when there is none)."""
    pair = graph.qdq_pair_on(t)
    return pair[0].inputs[0] if pair is not None else t


def _softmax_behind(graph: QGraph, t: Tensor) -> tuple[Node, tuple[Node, ...]] | None:
    """Walk back from ``t`` through Q/DQ pairs and PROB_OPS to a Softmax."""
    between: list[Node] = []
    for _ in range(MAX_ATTENTION_HOPS + 1):
        t = _skip_qdq_back(graph, t)
        p = graph.producer(t)
        if p is None:
            return None
        if p.op == "Softmax":
            return p, tuple(reversed(between))
        if p.op not in PROB_OPS or not p.inputs:
            return None
        between.append(p)
        t = p.inputs[0]
    return None


def _softmax_ahead(graph: QGraph, t: Tensor) -> tuple[Node, tuple[Node, ...]] | None:
    """Walk forward from ``t`` through Q/DQ and SCORE_OPS to the nearest Softmax (bounded BFS)."""
    todo: deque[tuple[Tensor, tuple[Node, ...]]] = deque([(t, ())])
    seen = {id(t)}
    while todo and len(seen) <= _MAX_VISITED:
        cur, path = todo.popleft()
        for c in cur.outputs:
            if c.op == "Softmax":
                return c, path
            if graph.is_q(c) or graph.is_dq(c):
                nxt_path = path
            elif c.op in SCORE_OPS and len(path) < MAX_ATTENTION_HOPS:
                nxt_path = (*path, c)
            else:
                continue
            for o in c.outputs[:1]:
                if id(o) not in seen:
                    seen.add(id(o))
                    todo.append((o, nxt_path))
    return None


def attention_matmul(graph: QGraph, node: Node | None) -> AttentionMatMul | None:
    """``node`` as one of attention's two batched matmuls, else None. BMM2 (``"pv"``) reads a
    Softmax output (through Q/DQ and layout ops) on either input; BMM1 (``"qk"``) feeds a Softmax
    through the scale, mask and reshape ops. Only activation x activation MatMuls qualify."""
    if not is_activation_matmul(graph, node):
        return None
    for i, t in enumerate(node.inputs):
        hit = _softmax_behind(graph, t)
        if hit is not None:
            return AttentionMatMul(node, "pv", hit[0], hit[1], i)
    hit = _softmax_ahead(graph, node.outputs[0])
    if hit is not None:
        return AttentionMatMul(node, "qk", hit[0], hit[1])
    return None


def weight_dq_reader(graph: QGraph, node: Node | None) -> tuple[Node, Node] | None:
    """(weight DQ, the node that reads its output) of a weighted GEMM with a quantized weight:
    the GEMM itself, or the first Transpose/Identity/Reshape on the weight's path. Actions that
    replace the DQ by float values (the ignore list) edit that reader's input."""
    wm = weighted_matmul(graph, node)
    if wm is None or wm.weight.dq is None:
        return None
    return wm.weight.dq, (wm.weight.through[0] if wm.weight.through else wm.node)


def is_constant_input(graph: QGraph, t: Tensor) -> bool:
    """A constant in any form a producer writes: an initializer, or one behind a DQ (ORT's int8
    bias of an Add), Identity (ModelOpt's deduplicated biases), Transpose or Reshape."""
    return weight_path(graph, t) is not None


def gemm_bias_data(graph: QGraph, add: Node | None) -> Tensor | None:
    """The GEMM-side input of a bias Add: ``Add(GEMM(x) [-> Q/DQ], b)`` with ``b`` constant in
    any form (``is_constant_input``) and a weighted MatMul/Gemm behind the other input (through at
    most one Q/DQ pair: ORT quantizes every MatMul output). TensorRT runs the bias Add in the
    GEMM's kernel (docs/transformers.md 1.3), so the pair is one GEMM with a bias. None otherwise."""
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return None
    consts = [is_constant_input(graph, t) for t in add.inputs]
    if sum(consts) != 1:
        return None
    data = add.inputs[consts.index(False)]
    p = graph.producer(_skip_qdq_back(graph, data))
    return data if p is not None and p.op in GEMM_OPS and weighted_matmul(graph, p) else None
