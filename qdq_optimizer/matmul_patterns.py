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

import onnx

from .commute import is_const, is_int8_qdq, is_int8_tensor
from .graph import Node, QGraph, Tensor, constant_value
from .ops import DATA_MOVEMENT_OPS, GEMM_OPS

# Ops that may sit between a weight's DQ and the GEMM input and still leave a constant weight
# (TensorRT folds them into the weights; ModelOpt's FP8 exporter pre-transposes them instead).
WEIGHT_PATH_OPS = frozenset({"Transpose", "Identity", "Reshape"})
MAX_WEIGHT_HOPS = 4

# Ops between BMM1 and the Softmax: the attention scale (Mul/Div), the mask (Add/Sub/Where) and
# head reshapes. Between the Softmax and BMM2: layout ops (YOLO11's C2PSA transposes the
# probabilities and feeds them as BMM2's second input) and dropout.
SCORE_OPS = frozenset(
    {"Mul", "Div", "Add", "Sub", "Where", "Reshape", "Transpose", "Cast", "Identity", "Squeeze"}
    | {"Unsqueeze", "Flatten", "Clip"}  # Clip: the saturation a removed Q/DQ pair leaves
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


def is_int4_weight_only(graph: QGraph, wm: WeightedMatMul) -> bool:
    """TensorRT's INT4 weight-only GEMM (W4A16, ModelOpt's ``quantize_mode=int4``): the weight
    behind a signed INT4 DQ with zero zero points (per channel or block-wise, blocks along the
    reduction axis) and a data input that is not INT8. TensorRT runs it as written, INT4 weights
    under float activations ("INT4: weight-only quantization"), so it is not an INT8 GEMM with
    a missing input quantizer."""
    dq = wm.weight.dq
    if dq is None or is_int8_tensor(graph, wm.data):
        return False
    try:
        p = graph.qparams(dq)
    except ValueError:
        return False
    return p.dtype == onnx.TensorProto.INT4 and (p.zero_point is None or not p.zero_point.any())


def int4_weight_only_dqs(graph: QGraph) -> set[int]:
    """Ids of the weight DQs of INT4 weight-only GEMMs (``is_int4_weight_only``) that no other
    GEMM reads otherwise: one pass over the GEMMs."""
    found: set[int] = set()
    other: set[int] = set()
    for node in graph.topo_nodes():
        if node.op not in ("MatMul", "Gemm"):
            continue
        wm = weighted_matmul(graph, node)
        if wm is None or wm.weight.dq is None:
            continue
        (found if is_int4_weight_only(graph, wm) else other).add(id(wm.weight.dq))
    return found - other


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


@dataclass(frozen=True)
class AttentionBlock:
    """One attention core: a Softmax with the BMM1 that feeds it and the BMM2 that reads it (each
    None when not found, e.g. a Softmax over a classifier's logits has neither)."""

    softmax: Node
    bmm1: AttentionMatMul | None
    bmm2: AttentionMatMul | None

    def probabilities(self) -> Tensor | None:
        """BMM2's input that carries the Softmax output."""
        if self.bmm2 is None or self.bmm2.probs_input is None:
            return None
        return self.bmm2.node.inputs[self.bmm2.probs_input]

    def values(self) -> Tensor | None:
        """BMM2's other input (V)."""
        if self.bmm2 is None or self.bmm2.probs_input is None:
            return None
        return self.bmm2.node.inputs[1 - self.bmm2.probs_input]


def attention_blocks(graph: QGraph) -> list[AttentionBlock]:
    """Every attention core of ``graph`` in topological order of its Softmax: each MatMul is
    classified once (``attention_matmul``, a bounded walk), so the pass is linear."""
    found: dict[int, list] = {}
    order: list[int] = []
    for node in graph.topo_nodes():
        if node.op != "MatMul":
            continue
        am = attention_matmul(graph, node)
        if am is None:
            continue
        key = id(am.softmax)
        if key not in found:
            found[key] = [am.softmax, None, None]
            order.append(key)
        slot = 1 if am.role == "qk" else 2
        if found[key][slot] is None:
            found[key][slot] = am
    return [AttentionBlock(*found[k]) for k in order]


def _dim(t: Tensor | None, axis: int) -> int | None:
    shape = getattr(t, "shape", None)
    if shape is None or len(shape) < -axis:
        return None
    d = shape[axis]
    return int(d) if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None


@dataclass(frozen=True)
class AttentionShape:
    """What TensorRT's INT8 fused-attention restrictions look at, None where a shape is unknown:
    the Q/K head size (BMM1's contracted axis), the V head size and both sequence lengths."""

    head_qk: int | None
    head_v: int | None
    seq_q: int | None
    seq_kv: int | None


def attention_shape(block: AttentionBlock) -> AttentionShape:
    """Head sizes and sequence lengths of ``block`` from the tensors' static shapes.

    BMM1 is ``[.., S_q, D] x [.., D, S_kv]``. BMM2 is ``P [.., S_q, S_kv] x V [.., S_kv, Dv]``, or
    with the probabilities second (YOLO11's C2PSA: ``V [.., Dv, S_kv] x P^T [.., S_kv, S_q]``)."""
    head_qk = seq_q = seq_kv = head_v = None
    if block.bmm1 is not None:
        a, b = block.bmm1.node.inputs
        head_qk, seq_q, seq_kv = _dim(a, -1) or _dim(b, -2), _dim(a, -2), _dim(b, -1)
    v = block.values()
    if v is not None:
        first = block.bmm2.probs_input == 0
        head_v = _dim(v, -1) if first else _dim(v, -2)
        seq_kv = seq_kv or (_dim(v, -2) if first else _dim(v, -1))
    return AttentionShape(head_qk, head_v, seq_q, seq_kv)


@dataclass(frozen=True)
class ScoreScale:
    """A constant Mul/Div on BMM1's output: scores * ``factor``. ``clips`` are the Clips with
    constant bounds between BMM1 and it (the saturation of BMM1's output pair that the rules
    removed, ORT quantizes every MatMul output); moving the scale multiplies their bounds too."""

    node: Node
    factor: float
    clips: tuple[Node, ...] = ()


def _const_clip(node: Node) -> bool:
    return (
        node.op == "Clip"
        and len(node.inputs) == 3
        and all(t.name and is_const(t) for t in node.inputs[1:])
        and all(constant_value(t).size == 1 for t in node.inputs[1:])
    )


def score_scale(graph: QGraph, bmm1: Node) -> ScoreScale | None:
    """The attention scale applied right after BMM1 (BERT's ``/ sqrt(d)``, YOLO11's ``* scale``):
    a Mul with a constant scalar operand or a Div by one, reading BMM1's output alone (through
    constant-bound Clips, each read alone), nothing on the way a graph output. ``factor`` is what
    the scores are multiplied by (1/d for a Div). None for any other form, or a factor that is not
    finite and positive."""
    out, clips = bmm1.outputs[0], []
    while True:
        if len(out.outputs) != 1 or graph.is_graph_output(out):
            return None
        op = out.outputs[0]
        if not _const_clip(op) or op.inputs[0] is not out or len(clips) == MAX_ATTENTION_HOPS:
            break
        clips.append(op)
        out = op.outputs[0]
    if op.op not in ("Mul", "Div") or len(op.inputs) != 2:
        return None
    if op.op == "Div" and op.inputs[0] is not out:
        return None
    other = op.inputs[1] if op.inputs[0] is out else op.inputs[0]
    value = constant_value(other) if is_const(other) else None
    if value is None or value.size != 1:
        return None
    s = float(value.reshape(()))
    factor = 1.0 / s if op.op == "Div" and s != 0 else (s if op.op == "Mul" else float("nan"))
    if not (factor > 0 and factor < float("inf")):
        return None
    return ScoreScale(op, factor, tuple(clips))


def _exclusive_pair(graph: QGraph, t: Tensor, reader: Node) -> tuple[Node, Node] | None:
    """(Q, DQ) producing ``t`` when both are int8 and per-tensor, the Q reads an activation, the Q's
    output is read by that DQ alone and the DQ's by ``reader`` alone: a pair a rewrite may
    re-scale without touching another reader."""
    pair = graph.qdq_pair_on(t)
    if pair is None:
        return None
    q, dq = pair
    if is_const(q.inputs[0]) or not (is_int8_qdq(graph, q) and is_int8_qdq(graph, dq)):
        return None
    if len(q.outputs[0].outputs) != 1 or graph.is_graph_output(q.outputs[0]):
        return None
    if [id(c) for c in t.outputs] != [id(reader)] or graph.is_graph_output(t):
        return None
    try:
        if graph.qparams(q).per_axis or graph.qparams(dq).per_axis:
            return None
    except ValueError:
        return None
    return pair


@dataclass(frozen=True)
class ScaleMove:
    """How to move BMM1's score scale onto one of its inputs: ``scale`` (the Mul/Div after BMM1)
    goes in front of ``q`` (the input's quantizer), whose pair gets its scale times the factor;
    ``layout`` are the data-movement ops between the DQ and BMM1 (a scalar commutes with them)."""

    scale: ScoreScale
    q: Node
    dq: Node
    layout: tuple[Node, ...]


def attention_scale_move(graph: QGraph, bmm1: Node) -> ScaleMove | None:
    """The rewrite ``attention-scale-before-bmm1`` makes on an INT8 BMM1, or None when it does not
    apply: a ``score_scale`` right after BMM1, and an input (Q first, then K) that arrives through
    an exclusive int8 per-tensor Q/DQ pair, possibly behind data-movement ops read only on that
    path. TensorRT wants Q or K scaled before BMM1 (docs/transformers.md 1.2)."""
    if not is_activation_matmul(graph, bmm1) or not is_int8_matmul(graph, bmm1):
        return None
    role = attention_matmul(graph, bmm1)
    if role is None or role.role != "qk":
        return None  # a scalar after any other activation matmul is not the attention scale
    scale = score_scale(graph, bmm1)
    if scale is None:
        return None
    for t in bmm1.inputs:
        reader, layout = bmm1, []
        for _ in range(MAX_ATTENTION_HOPS):
            p = graph.producer(t)
            if p is None or graph.is_dq(p) or p.op not in DATA_MOVEMENT_OPS:
                break
            if len(t.outputs) != 1 or graph.is_graph_output(t) or len(p.outputs) != 1:
                break
            reader, t = p, p.inputs[0]
            layout.append(p)
        pair = _exclusive_pair(graph, t, reader)
        if pair is not None and _broadcast_safe(scale, pair[0].inputs[0], bmm1.outputs[0]):
            return ScaleMove(scale, pair[0], pair[1], tuple(reversed(layout)))
    return None


def _broadcast_safe(scale: ScoreScale, *tensors: Tensor) -> bool:
    """The scale's constant (one value, any rank) broadcasts into each tensor without raising its
    rank, so moving it changes no shape."""
    ndim = next(constant_value(t) for t in scale.node.inputs if is_const(t)).ndim
    if ndim == 0:
        return True
    ranks = [_rank(t) for t in tensors]
    return all(r is not None and ndim <= r for r in ranks)


def softmax_qdq_reader(graph: QGraph, block: AttentionBlock) -> Node | None:
    """Where ``softmax-output-qdq`` puts a Q/DQ on the Softmax output: the node on the path to
    BMM2 that reads the Softmax output (BMM2 itself, or the first layout op), when BMM1 and V are
    INT8, the probabilities float and every op between the Softmax and BMM2 a data-movement op
    (so TensorRT sees BMM2's input as INT8). None otherwise."""
    if block.bmm1 is None or block.bmm2 is None or not is_int8_matmul(graph, block.bmm1.node):
        return None
    probs, values = block.probabilities(), block.values()
    if probs is None or is_int8_tensor(graph, probs) or not is_int8_tensor(graph, values):
        return None
    if any(n.op not in DATA_MOVEMENT_OPS for n in block.bmm2.between):
        return None
    reader = block.bmm2.between[0] if block.bmm2.between else block.bmm2.node
    if not any(t is block.softmax.outputs[0] for t in reader.inputs):
        return None  # a Q/DQ (not INT8 here, e.g. uint8) sits between: leave it
    return reader
