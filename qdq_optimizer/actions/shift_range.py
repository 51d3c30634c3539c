"""Re-centre one-sided INT8 activations: ``shift_one_sided`` (rule ``shift-relu-range``).

A tensor a Relu or a Clip(0, m) makes lies in [0, a]; the signed symmetric int8 TensorRT runs
spends half its codes on negatives it never holds (step a/127 where uint8 had a/255: the cost
``symmetric-int8`` warns about, and pytorch-quantization's and ModelOpt's own graphs pay it too).
Quantizing ``x' = x - c`` with ``c = a/2`` puts the same values on all the codes:

    before: Conv(b) -> Relu -> Q/DQ(s) -> [MaxPool, Concat, Resize ...] -> Q/DQ(s) -> Conv(W, b2)
    after:  Conv(b - c) -> Clip(-c) -> Q/DQ(s/2) -> [...] -> Q/DQ(s/2) -> Conv(W, b2 + c*sum W)
                                                                       [-> Add(DQ(border))]

The offset travels as one *component*: the tensors joined by Q/DQ pairs and by ops that carry a
constant offset (``commute.offset_inputs``: data movement, MaxPool, Concat, nearest/linear
Resize). Every pair in it must share one per-tensor int8 scale (``scale-groups`` has tied Concat
and MaxPool groups), every value entering it must come from a conv's Relu/Clip(0, m), and every
value leaving it must enter a Conv's data input; otherwise it is left alone (a residual skip, a
graph output, a ConvTranspose or any other reader would see the offset).

- each source conv's bias moves by ``-c`` and its activation becomes ``Clip(-c, m - c)``, which
  TensorRT fuses into the conv as it fused the Relu (Clip is one of its fused activations);
- each consumer conv adds back what the shift took away: every output reading only shifted
  inputs gains ``c * sum(W)`` over its output channel's weights (those TensorRT uses: the
  dequantized int8), put in the bias, exact up to float rounding;
- a padded consumer's padding still reads 0, which now stands for ``c``: its border outputs
  take ``c * (sum of W over the taps that fall in the padding)`` away again, an int8 constant
  (zero inside the border) added to the conv output through a DQ. That is the residual form
  TensorRT fuses into the conv as an INT8 epilogue (a skip input arriving through DQ; facts
  section 1), the conv's output its first input. The constant rounds to its own step (the
  change says how large); it needs the input's height and width, so a padded consumer of a
  tensor whose spatial shape is unknown, or whose output already feeds an Add, keeps the
  component unshifted;
- with ``c = 127 s/2`` the new grid ``c + k s/2`` holds every point ``j s`` of the old one, so no
  value is rounded worse, and most are rounded twice as finely.

Activations bounded below but not by zero (hard-swish >= -3/8, SiLU >= -0.2785, in any form an
exporter writes: ``pointwise.scalar_chain`` follows the elementwise ops back to the one tensor
they are a function of, ``pointwise.least_value`` evaluates their least value) are sources too.
No bias can move a value through them, so a new ``Add(activation, -c)`` shifts it, a pointwise
op TensorRT fuses into the conv's epilogue with the activation; the component's range
``[low, 127 s]`` then spans all the codes with zero on one of them (``_offset_grid``).
It is shifted only when the step shrinks to ``MAX_STEP_RATIO`` of the old one or less, which a
shifted range never does again.

Shifted tensors get new names: a name keeps the values it had in the input (calibration ranges
read it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..biases import float_bias, set_float_bias
from ..commute import is_const, offset_inputs, value_outputs
from ..graph import Node, QGraph, Tensor, constant_value
from ..pointwise import least_value, scalar_chain
from ..protos import is_float_dtype
from ..qdq_numpy import dequantize_np, quantize_np
from ..report import Change
from ..trt_patterns import per_tensor_int8, residual_inputs
from .clamps import clip_bounds
from .mean_keep import output_mean_shift
from .registry import ActionContext, register_action

# A range [low, a] with low < 0 is shifted only when its step shrinks at least this much (a
# shifted range is not shifted again: its least value is then the lowest code).
MAX_STEP_RATIO = 0.75


def _zero_padding(conv: Node) -> bool:
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto in ("NOTSET", "VALID") and not any(conv.attrs.get("pads", []))


def _clip_bounds(act: Node) -> tuple[float, float | None] | None:
    """(0, max or None) of a Relu or a Clip whose min is 0; None for anything else."""
    if act.op == "Relu":
        return 0.0, None
    if act.op != "Clip" or act.attrs:  # opset-6 Clip (attributes) is upgraded before the rules
        return None
    bounds = clip_bounds(act)
    if bounds is None or bounds[0] != 0.0 or not bounds[1] > 0:
        return None
    return 0.0, None if np.isinf(bounds[1]) else bounds[1]


def _weight(graph: QGraph, conv: Node) -> np.ndarray | None:
    """The conv's weight as TensorRT computes with it: the dequantized int8 values, or a float
    constant."""
    w_t = conv.inputs[1]
    raw = constant_value(w_t)
    if raw is not None:
        return np.asarray(raw, np.float64) if is_float_dtype(np.asarray(raw).dtype) else None
    dq = graph.producer(w_t)
    if not graph.is_dq(dq):
        return None
    p = graph.qparams(dq)
    src = constant_value(dq.inputs[0])
    if src is None:  # pair form: DQ(Q(float W))
        q = graph.producer(dq.inputs[0])
        w = constant_value(q.inputs[0]) if graph.is_q(q) else None
        if w is None:
            return None
        qp = graph.qparams(q)
        src = quantize_np(w, qp.scale, qp.zero_point, qp.axis)
    return np.asarray(dequantize_np(src, p.scale, p.zero_point, p.axis), np.float64)


@dataclass
class _Component:
    """One set of tensors that must carry the same offset (module doc)."""

    tensors: list[Tensor] = field(default_factory=list)
    quantizers: list[Node] = field(default_factory=list)  # Q and DQ nodes
    sources: list[tuple[Node, Node]] = field(default_factory=list)  # (conv, Relu/Clip)
    # other activations (hard-swish, SiLU ...): (output, least value); an Add shifts them
    offsets: list[tuple[Tensor, float]] = field(default_factory=list)
    sinks: list[Node] = field(default_factory=list)  # convs reading a component tensor as data
    # convs whose residual Add reads a component tensor as its skip: their bias takes it back
    branches: list[Node] = field(default_factory=list)


def _clamp_source(graph: QGraph, act: Node) -> Node | None:
    """The conv whose bias shifts ``act`` when it is a Relu/Clip(0, m) (``_source_conv``)."""
    if act.op not in ("Relu", "Clip") or _clip_bounds(act) is None:
        return None
    return _source_conv(graph, act)


def _source_conv(graph: QGraph, act: Node) -> Node | None:
    """The conv whose bias can move the value ``act`` (a Relu/Clip(0, m)) clamps: the
    activation reads the conv's output (its only reader) directly, through the border Add this
    rule puts after a padded consumer conv (which may be a source of another component), or
    through a residual Add, whose conv branch then takes the offset (module doc)."""
    reader, t = act, act.inputs[0]
    p = graph.producer(t)
    if p is not None and p.op == "Add" and list(t.outputs) == [act]:
        if graph.is_graph_output(t):
            return None
        if len(p.inputs) == 2 and is_const_dq(graph, p.inputs[1]):
            reader, t = p, p.inputs[0]
            p = graph.producer(t)
        else:
            return _branch_conv(graph, p)
    if p is None or p.op != "Conv" or list(t.outputs) != [reader] or graph.is_graph_output(t):
        return None
    return p


def _branch_conv(graph: QGraph, add: Node, skip: Tensor | None = None) -> Node | None:
    """The conv of a residual Add's conv branch (the input TensorRT fuses the Add into,
    ``trt_patterns.residual_inputs``) when the Add reads its output directly, the Add its only
    reader, so an offset added to its bias reaches the Add's output unchanged; with ``skip``,
    only when that tensor is the Add's skip input."""
    split = residual_inputs(graph, add)
    if split is None or (skip is not None and add.inputs[split[1]] is not skip):
        return None
    t = add.inputs[split[0]]
    p = graph.producer(t)
    if p is None or p.op != "Conv" or list(t.outputs) != [add] or graph.is_graph_output(t):
        return None
    return p


def is_const_dq(graph: QGraph, t: Tensor) -> bool:
    """``t`` is a DQ of a constant (a weight-like int8 tensor)."""
    dq = graph.producer(t)
    return graph.is_dq(dq) and constant_value(dq.inputs[0]) is not None


def _component(graph: QGraph, start: Tensor, ctx: ActionContext) -> _Component | None:
    """The component of ``start`` (module doc), or None when any part of it cannot carry the
    offset, or when an earlier anchor of this visit already walked it. Components are disjoint,
    so every tensor a walk reaches is remembered for the rest of the visit: each is walked
    once (in a dry run an accepted component is reported once), and the rule is linear in the
    graph's size however many anchors a component holds."""
    walked = ctx.cache.setdefault("shift_walked", set())
    if id(start) in walked:
        return None
    seen: set[int] = set()
    comp = _walk(graph, start, ctx, seen, walked)
    walked.update(seen)
    return comp


def _walk(
    graph: QGraph, start: Tensor, ctx: ActionContext, seen: set[int], walked: set[int]
) -> _Component | None:
    comp = _Component()
    nodes_seen: set[int] = set()
    todo = deque([start])

    def visit_node(n: Node) -> bool:
        if id(n) in nodes_seen:
            return False
        nodes_seen.add(id(n))
        return True

    def through(n: Node) -> bool:
        """Walk on through an op that carries the offset; False when it is on the ignore list."""
        if visit_node(n):
            if ctx.is_ignored(n):
                return False
            todo.extend(offset_inputs(n))
            todo.extend(value_outputs(n))
        return True

    while todo:
        t = todo.popleft()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) in walked:  # reached from another anchor: one component, walked (refused) once
            return None
        if graph.is_graph_output(t) or is_const(t):
            return None
        comp.tensors.append(t)
        p = graph.producer(t)
        if p is None:
            return None  # a graph input: nothing upstream can take the offset
        if graph.is_dq(p):
            q = graph.producer(p.inputs[0])
            if not graph.is_q(q):
                return None
            if visit_node(q):
                comp.quantizers.append(q)
                todo.append(q.inputs[0])
        elif (conv := _clamp_source(graph, p)) is not None:
            if visit_node(p):
                if ctx.any_ignored([conv, p]):
                    return None
                comp.sources.append((conv, p))
        elif any(v is t for v in value_outputs(p)) and offset_inputs(p):
            if not through(p):
                return None
        elif (chain := scalar_chain(graph, t)) is not None:
            low = least_value(graph, *chain, t)
            if low is None or ctx.any_ignored(chain[1]):
                return None
            if visit_node(p):
                comp.offsets.append((t, min(low, 0.0)))
        else:
            return None
        for c in t.outputs:
            if graph.is_q(c):
                if c.inputs[0] is not t or graph.is_graph_output(c.outputs[0]):
                    return None
                if visit_node(c):
                    comp.quantizers.append(c)
                for dq in c.outputs[0].outputs:
                    if not graph.is_dq(dq) or dq.inputs[0] is not c.outputs[0]:
                        return None
                    if visit_node(dq):
                        comp.quantizers.append(dq)
                    todo.append(dq.outputs[0])
            elif graph.is_dq(c):
                return None
            elif (
                c.op in ("Conv", "Gemm")
                and c.inputs[0] is t
                and all(i is not t for i in c.inputs[1:])
            ):
                if visit_node(c):
                    if ctx.is_ignored(c):
                        return None
                    comp.sinks.append(c)
            elif c.op == "Add" and (branch := _branch_conv(graph, c, t)) is not None:
                if visit_node(c):
                    if ctx.any_ignored([c, branch]):
                        return None
                    comp.branches.append(branch)
            elif any(i is t for i in offset_inputs(c)):
                if not through(c):
                    return None
            else:
                return None
    return comp


def _pads(conv: Node, spatial: tuple[int, int], kernel: tuple[int, int]) -> list[int] | None:
    """[top, left, bottom, right] padding of a 2-D conv (auto_pad resolved), None if unknown."""
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", "VALID"):
        pads = list(conv.attrs.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
        return [int(v) for v in pads] if len(pads) == 4 else None
    strides = list(conv.attrs.get("strides", [1, 1]))
    dil = list(conv.attrs.get("dilations", [1, 1]))
    before, after = [], []
    for d in range(2):
        out = -(-spatial[d] // strides[d])
        total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dil[d] + 1 - spatial[d])
        small, big = total // 2, total - total // 2
        before.append(small if auto == "SAME_UPPER" else big)
        after.append(big if auto == "SAME_UPPER" else small)
    return before + after


def _padded_taps_sum(
    w: np.ndarray, conv: Node, spatial: tuple[int, int] | None
) -> np.ndarray | None:
    """Per output channel and position, the sum of ``w`` over the taps that fall in the padding
    (``[Cout, Ho, Wo]``, zero inside the border); an empty array for an unpadded conv; None when
    the input's spatial shape is needed and unknown, or the conv is not 2-D."""
    if _zero_padding(conv):
        return np.zeros((0,))
    if w.ndim != 4 or spatial is None:
        return None
    kernel = (w.shape[2], w.shape[3])
    pads = _pads(conv, spatial, kernel)
    if pads is None:
        return None
    if not any(pads):
        return np.zeros((0,))
    strides = [int(v) for v in conv.attrs.get("strides", [1, 1])]
    dil = [int(v) for v in conv.attrs.get("dilations", [1, 1])]
    masks = []
    for d in range(2):
        n_out = (spatial[d] + pads[d] + pads[d + 2] - dil[d] * (kernel[d] - 1) - 1) // strides[
            d
        ] + 1
        pos = np.arange(n_out)[:, None] * strides[d] - pads[d] + np.arange(kernel[d])[None] * dil[d]
        masks.append(((pos < 0) | (pos >= spatial[d])).astype(np.float64))  # [out, k]: in padding
    per_tap = w.sum(axis=1)  # [Cout, kh, kw]: the input is one constant over every channel
    inside = (1.0 - masks[0]) @ per_tap @ (1.0 - masks[1]).T  # [Cout, Ho, Wo]
    return per_tap.sum(axis=(1, 2))[:, None, None] - inside


def _spatial(graph: QGraph, t: Tensor, ctx: ActionContext) -> tuple[int, int] | None:
    """Height and width of a 4-D activation: from its shape or (a DQ output) its Q's input's,
    else from ONNX shape inference over the whole graph, run once per visit (exports without
    value_info, tensors a rule made) so the answer does not depend on what the file records."""
    for cand in (t, _q_input(graph, t)):
        hw = _hw(getattr(cand, "shape", None) if cand is not None else None)
        if hw is not None:
            return hw
    if "shapes" not in ctx.cache:
        ctx.cache["shapes"] = _inferred_shapes(graph)
    shapes = ctx.cache["shapes"]
    for cand in (t, _q_input(graph, t)):
        hw = _hw(shapes.get(cand.name)) if cand is not None else None
        if hw is not None:
            return hw
    return None


def _hw(shape: object) -> tuple[int, int] | None:
    if shape is None or len(shape) != 4 or not all(isinstance(v, int) and v > 0 for v in shape[2:]):
        return None
    return int(shape[2]), int(shape[3])


def _inferred_shapes(graph: QGraph) -> dict[str, list]:
    try:
        model = onnx.shape_inference.infer_shapes(graph.to_model())
    except (
        onnx.shape_inference.InferenceError,
        onnx.checker.ValidationError,
        ValueError,
        RuntimeError,
        TypeError,
    ):  # advisory: an unknown shape only refuses a padded sink
        return {}
    found = {}
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        found[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return found


def _q_input(graph: QGraph, t: Tensor) -> Tensor | None:
    dq = graph.producer(t)
    if not graph.is_dq(dq):
        return None
    q = graph.producer(dq.inputs[0])
    return q.inputs[0] if graph.is_q(q) else None


@dataclass
class _SinkFix:
    conv: Node
    weight_sum: np.ndarray  # per output channel
    border: np.ndarray  # [Cout, Ho, Wo] taps in the padding, or empty


def _plan_sinks(graph: QGraph, comp: _Component, ctx: ActionContext) -> list[_SinkFix] | None:
    fixes = []
    for conv in comp.sinks:
        w = _weight(graph, conv)
        weight_sum = _input_sum(conv, w) if w is not None else None
        if weight_sum is None or float_bias(graph, conv, weight_sum.size) is None:
            return None
        if conv.op == "Gemm":
            fixes.append(_SinkFix(conv, weight_sum, np.zeros((0,))))
            continue
        spatial = None if _zero_padding(conv) else _spatial(graph, conv.inputs[0], ctx)
        border = _padded_taps_sum(w, conv, spatial)
        if border is None:
            return None
        if border.size and any(c.op == "Add" for c in conv.outputs[0].outputs):
            return None  # a second Add after the conv would break its residual fusion
        fixes.append(_SinkFix(conv, weight_sum, border))
    return fixes


def _input_sum(op: Node, w: np.ndarray) -> np.ndarray | None:
    """Per output channel, what a Conv or Gemm adds when every input value grows by one: the
    sum of its weights (``mean_keep``'s output-mean change for a uniform input mean of 1); None
    for a form that has no such bias (a Gemm with alpha, beta or transA)."""
    if op.op == "Conv":
        cin = w.shape[1] * int(op.attrs.get("group", 1))
    else:
        cin = w.shape[1] if op.attrs.get("transB", 0) else w.shape[0]
    return output_mean_shift(op, w, np.ones(cin))


def _add_border(graph: QGraph, fix: _SinkFix, c: float) -> float:
    """Subtract ``c * border`` from the conv's output through an int8 DQ constant (returns its
    step). Each channel's values are centred on a multiple of the step that the bias takes
    back, so the interior stays exact while the border rounds to half the step it would."""
    conv, values = fix.conv, -c * fix.border
    lo = np.minimum(values.min(axis=(1, 2)), 0.0)
    hi = np.maximum(values.max(axis=(1, 2)), 0.0)
    half = float(((hi - lo) / 2).max())
    if half == 0:
        return 0.0
    step = float(graph.to_float_type(np.float32(half / 126.5)))
    centre = np.rint(-(lo + hi) / 2 / step)  # per channel, in codes
    codes = quantize_np(values + (centre * step)[:, None, None], np.float32(step), None, None)
    b = float_bias(graph, conv, values.shape[0])
    set_float_bias(graph, conv, b - centre * step)
    out = conv.outputs[0]
    name = graph.unique_name(f"{conv.name}_border")
    dq_out = gs.Variable(f"{name}_value", dtype=out.dtype)
    graph.add_node(
        "DequantizeLinear",
        [
            gs.Constant(f"{name}_int8", codes[None]),
            graph.float_constant(f"{name}_scale", np.float32(step)),
            graph.constant(f"{name}_zp", np.int8(0)),
        ],
        [dq_out],
        f"{name}_DequantizeLinear",
    )
    pre = gs.Variable(graph.unique_name(f"{out.name}_unpadded"), dtype=out.dtype, shape=out.shape)
    conv.outputs[0] = pre  # graph-surgeon's lists keep both tensors' producers in step
    graph.add_node("Add", [pre, dq_out], [out], f"{name}_Add")
    return step


@register_action("shift_one_sided", params={"padded_sinks": True})
def shift_one_sided(
    graph: QGraph, node: Node | None, params: dict, ctx: ActionContext
) -> list[Change]:
    """Shift the [0, a] component the anchor Q reads by a/2 onto all the int8 codes (module
    doc)."""
    q = node
    if q is None or not graph.is_q(q):
        return []
    comp = _component(graph, q.inputs[0], ctx)
    if comp is None:
        return []
    params_ = [per_tensor_int8(graph, n) for n in comp.quantizers]
    if any(p is None for p in params_) or any(
        n.attrs.get("saturate") == 0 for n in comp.quantizers
    ):
        return []
    scales = {float(p.scale.reshape(-1)[0]) for p in params_}
    if len(scales) != 1 or not (comp.sinks or comp.branches):
        return []
    (scale,) = scales
    low = min((v for _, v in comp.offsets), default=0.0)
    if low >= 0:  # [0, a]: the grid c + k s/2 holds every point of the old one
        step = float(graph.to_float_type(np.float32(scale / 2)))
        c = 127.0 * step
    else:  # [low, a] (hard-swish, SiLU): every code, zero on one of them
        grid = _offset_grid(graph, scale, low)
        if grid is None:
            return []
        step, c = grid
    sinks = _plan_sinks(graph, comp, ctx)
    if sinks is not None and not params.get("padded_sinks", True):  # no border constants
        sinks = None if any(f.border.size for f in sinks) else sinks
    biases = [_bias(graph, conv) for conv, _ in comp.sources]
    if sinks is None or any(
        b is None for b in (*biases, *map(partial(_bias, graph), comp.branches))
    ):
        return []
    padded = [f for f in sinks if f.border.size]
    added = f", {len(comp.offsets)} by a new Add" if comp.offsets else ""
    what = f"{len(sinks)} conv(s) add it back in their bias"
    if padded:
        what += f", {len(padded)} padded one(s) plus an int8 border term through DQ"
    change = Change(
        "shift",
        [
            *(n.name for pair in comp.sources for n in pair),
            *(n.name for n in comp.quantizers),
            *(f.conv.name for f in sinks),
        ],
        f"[{low:.4g}, {127 * scale:.4g}] from {len(comp.sources) + len(comp.offsets)} "
        f"activation(s) through {sum(graph.is_q(n) for n in comp.quantizers)} pair(s) shifted "
        f"by -{c:.4g} onto all int8 codes (step {scale:.4g} -> {step:.4g}){added}; {what} "
        "(not exact: the grid is finer)",
    )
    if ctx.dry_run:
        return [change]
    for (conv, act), b in zip(comp.sources, biases, strict=True):
        set_float_bias(graph, conv, b - c)
        lo, hi = _clip_bounds(act)
        ins = [act.inputs[0], graph.float_constant(f"{act.name}_min", np.float32(lo - c))]
        if hi is not None:
            ins.append(graph.float_constant(f"{act.name}_max", np.float32(hi - c)))
        out = act.outputs[0]
        graph.remove_node(act)
        graph.add_node("Clip", ins, [out], graph.unique_name(f"{act.name}_shifted"))
    keep_names = [_subtract_after(graph, t, c) for t, _ in comp.offsets]
    for conv in comp.branches:  # Add(conv + c, skip - c): the Add's output is unchanged
        set_float_bias(graph, conv, _bias(graph, conv) + c)
    steps = []
    for fix in sinks:
        b = float_bias(graph, fix.conv, fix.weight_sum.size)
        set_float_bias(graph, fix.conv, b + c * fix.weight_sum)
        if fix.border.size:
            steps.append(_add_border(graph, fix, c))
    for n in comp.quantizers:
        graph.set_qparams(n, np.float32(step))
    for t in comp.tensors:  # a name keeps the values it had in the input
        t.name = graph.unique_name(f"{t.name}_shifted")
    for unshifted, name in keep_names:
        unshifted.name = name
    graph.touch()
    if steps:
        kib = sum(f.border.size for f in padded) / 1024
        change.detail += f"; border term step up to {max(steps):.3g}, {kib:.0f} KiB of int8"
    return [change]


def _offset_grid(graph: QGraph, scale: float, low: float) -> tuple[float, float] | None:
    """(step, c) that put ``[low, 127 scale]`` on the 256 int8 codes of ``x - c`` with 0 on a
    code: ``n`` codes below zero (enough for ``low``), the rest up to ``127 scale``. Zero must stay
    exact: most hard-swish and SiLU outputs are (near) 0, and a grid that misses it rounds them
    all one way, a bias every reader adds up (measured: -5 dB on a YOLOX detector). None when the
    step would not shrink to ``MAX_STEP_RATIO`` of the old one."""
    top = 127.0 * scale
    n = int(np.ceil(-low * 255.0 / (top - low) - 1e-6))
    step = float(graph.to_float_type(np.float32(top / (255 - n))))
    if not step <= MAX_STEP_RATIO * scale:
        return None
    return step, (128 - n) * step


def _subtract_after(graph: QGraph, t: Tensor, c: float) -> tuple[Tensor, str]:
    """Make ``t`` the output of a new ``Add(activation, -c)``; returns the activation's output
    and the name it takes back once the shifted tensors are renamed."""
    act = graph.producer(t)
    unshifted = gs.Variable(graph.unique_name(f"{t.name}_unshifted"), dtype=t.dtype, shape=t.shape)
    act.outputs[0] = unshifted
    shift = graph.float_constant(f"{act.name}_shift", np.float32(-c))
    graph.add_node("Add", [unshifted, shift], [t], graph.unique_name(f"{act.name}_shift_Add"))
    return unshifted, t.name


def _bias(graph: QGraph, conv: Node) -> np.ndarray | None:
    """The conv's float bias, None when its weight or bias is in a form the rule cannot move."""
    w = _weight(graph, conv)
    return None if w is None else float_bias(graph, conv, int(w.shape[0]))
