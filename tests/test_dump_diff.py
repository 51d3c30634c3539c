"""dump is canonical (names and file order do not matter); diff sees Q/DQ changes by category."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from qdq_builders import Builder, messy_model  # noqa: I001

import cli
from qdq_optimizer import optimize
from qdq_optimizer.diff import diff_models
from qdq_optimizer.dump import dump_model


@pytest.fixture(scope="module")
def messy() -> onnx.ModelProto:
    return messy_model()


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node and tensor renamed (as a re-export with another exporter would)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    names: dict[str, str] = {}

    def rn(n: str) -> str:
        if not n:
            return n
        return names.setdefault(n, f"x{len(names) * 7919 % 10007}")

    for node in g.node:
        node.name = "node_" + rn(node.name)
        node.input[:] = [rn(i) for i in node.input]
        node.output[:] = [rn(o) for o in node.output]
    for coll in (g.input, g.output, g.value_info, g.initializer):
        for v in coll:
            v.name = rn(v.name)
    return m


def _reordered(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weight DQ nodes (no graph inputs) moved to the front: still topological, other order."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    first = [n for n in m.graph.node if all(i in inits for i in n.input)]
    rest = [n for n in m.graph.node if not all(i in inits for i in n.input)]
    nodes = [onnx.NodeProto() for _ in range(len(first) + len(rest))]
    for dst, src in zip(nodes, first[::-1] + rest, strict=True):
        dst.CopyFrom(src)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def test_dump_is_deterministic_and_states_precision(messy):
    a = dump_model(messy)
    assert a == dump_model(messy)
    assert a.splitlines()[0].startswith("# qdqopt dump v2: scales rounded to 6 significant digits")
    assert "DequantizeLinear(c0=int8[8x3x3x3]#" in a  # weights by dtype, shape, hash
    assert "stem_in_Q" not in a  # renumbered
    assert "# stem_in_Q" in dump_model(messy, names=True)


def test_dump_ignores_names_and_file_order(messy):
    base = dump_model(messy)
    renamed = _renamed(messy)
    assert not {n.name for n in renamed.graph.node} & {n.name for n in messy.graph.node}
    assert dump_model(renamed) == base
    reordered = _reordered(messy)
    assert [n.name for n in reordered.graph.node] != [n.name for n in messy.graph.node]
    assert dump_model(reordered) == base


def _swapped(model: onnx.ModelProto, ops: tuple[str, ...]) -> onnx.ModelProto:
    """Every node of ``ops`` with its two inputs written the other way round."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    swapped = 0
    for n in m.graph.node:
        if n.op_type in ops and len(n.input) == 2:
            n.input[:] = [n.input[1], n.input[0]]
            swapped += 1
    assert swapped
    return m


@pytest.mark.parametrize("model", ["yolov8ish-naive.onnx", "yolov7-tiny-naive.onnx"])
def test_dump_ignores_the_order_of_commutative_inputs(model):
    """SiLU's Mul(x, Sigmoid(x)), the residual Adds: written either way, one dump."""
    path = Path(__file__).resolve().parents[1] / "fixtures" / "models" / model
    m = onnx.load(path)
    assert dump_model(_swapped(m, ("Add", "Mul"))) == dump_model(m)
    out, _ = optimize(m, "yolov8" if "v8" in model else "yolov7-tiny")
    assert dump_model(_swapped(out, ("Add", "Mul"))) == dump_model(out)


def test_dump_keeps_the_order_of_non_commutative_inputs():
    b = Builder()
    x = b.input("x", [1, 4, 3, 3])
    y = b.conv(x, 4, 4, in_scale=0.02, name="c")
    b.nodes.append(onnx.helper.make_node("Sub", [x, y], ["d"], name="sub"))
    b.output("d")
    m = b.build()
    assert dump_model(_swapped(m, ("Sub",))) != dump_model(m)


def test_dump_precision_and_weight_hash():
    b = Builder()
    x = b.input("x", [1, 4, 3, 3])
    y = b.conv(x, 4, 4, in_scale=0.0123456789, name="c")
    b.output(y)
    m = b.build()
    assert "scale=0.0123457 " in dump_model(m)
    assert "scale=0.012 " in dump_model(m, precision=2)
    changed = onnx.ModelProto()
    changed.CopyFrom(m)
    w = next(t for t in changed.graph.initializer if t.name.startswith("c_w"))
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] = np.int8(arr.flat[0] ^ 1)
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    assert dump_model(changed) != dump_model(m)


def test_diff_identical_and_renamed_scales(messy):
    d = diff_models(messy, messy)
    assert not d.differ and d.to_text() == "no differences\n"
    other = onnx.ModelProto()
    other.CopyFrom(messy)
    for t in other.graph.initializer:
        if numpy_helper.to_array(t).dtype == np.float32 and numpy_helper.to_array(t).shape == ():
            if float(numpy_helper.to_array(t)) == np.float32(0.07):
                t.CopyFrom(numpy_helper.from_array(np.float32(0.08), t.name))
    d = diff_models(messy, other)
    assert d.scales_changed == [
        "head input 0: [Q 0.05, DQ 0.05, Q 0.07, DQ 0.07] -> [Q 0.05, DQ 0.05, Q 0.08, DQ 0.08]"
    ]
    assert not d.pairs_added and not d.pairs_removed and not d.nodes_added


def test_diff_says_when_the_models_share_few_names(messy, capsys, tmp_path):
    assert diff_models(messy, messy).note is None
    assert diff_models(messy, optimize(messy, "cleanup")[0]).note is None
    renamed = _renamed(messy)
    d = diff_models(messy, renamed)
    assert d.differ and d.nodes_added and d.nodes_removed
    assert d.note is not None and d.note.startswith("only 0 of ")
    assert d.to_text().startswith("note: only 0 of ")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(messy, a)
    onnx.save(renamed, b)
    assert cli.main(["diff", str(a), str(b), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["note"] == d.note


def test_diff_after_cleanup(messy):
    out, _ = optimize(messy, "cleanup")
    d = diff_models(messy, out)
    assert d.differ
    assert d.chains_changed == [
        "c1 input 0: [Q 0.04, DQ 0.04, Q 0.04, DQ 0.04] -> [Q 0.04, DQ 0.04]"
    ]
    assert len(d.sharing_changed) == 2
    assert d.qdq_counts == ["7 Q + 13 DQ -> 5 Q + 10 DQ"]
    assert not d.nodes_added and not d.nodes_removed


def _pool_model(qdq_before_pool: bool, extra_relu: bool = False) -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", [1, 4, 8, 8])
    y = b.conv(x, 4, 4, name="c1")
    if qdq_before_pool:
        y = b.qdq(y, 0.05, name="p")
    y = b.node("MaxPool", [y], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    if not qdq_before_pool:
        y = b.qdq(y, 0.05, name="p")
    if extra_relu:
        y = b.node("Relu", [y], name="extra")
    y = b.conv(y, 4, 4, in_scale=None, act=None, name="c2")
    b.output(y)
    return b.build()


def test_diff_sees_a_moved_pair_and_added_nodes():
    a, b = _pool_model(False), _pool_model(True)
    d = diff_models(a, b)
    assert d.pairs_moved == ["[Q 0.05, DQ 0.05]: from c2 input 0 to pool input 0"]
    assert not d.pairs_added and not d.pairs_removed
    d = diff_models(a, _pool_model(False, extra_relu=True))
    assert d.nodes_added == ["extra (Relu)"]
    assert d.inputs_rewired  # c2 now reads the Relu


def test_cli_dump_and_diff(tmp_path, messy, capsys):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(messy, a)
    onnx.save(optimize(messy, "cleanup")[0], b)
    assert cli.main(["dump", str(a)]) == 0
    assert capsys.readouterr().out == dump_model(messy)
    assert cli.main(["dump", str(a), "-o", str(tmp_path / "a.txt"), "--precision", "3"]) == 0
    assert (tmp_path / "a.txt").read_text() == dump_model(messy, precision=3)
    assert cli.main(["dump", str(a), "-o", str(a)]) == 2  # never over the input
    assert cli.main(["diff", str(a), str(a)]) == 0
    assert "no differences" in capsys.readouterr().out
    assert cli.main(["diff", str(a), str(b)]) == 1
    captured = capsys.readouterr()
    assert "Q/DQ chains changed (1)" in captured.out and "models differ" in captured.err
    assert cli.main(["diff", str(a), str(b), "--format", "json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["differ"] is True and payload["qdq_counts"] == ["7 Q + 13 DQ -> 5 Q + 10 DQ"]
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert cli.main(["diff", str(a), str(tmp_path / "junk.onnx")]) == 2


def _scales_as_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The torch exporter's form: Q/DQ parameters from Constant nodes instead of initializers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    params = {
        n.input[i]
        for n in m.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        for i in (1, 2)
        if len(n.input) > i
    }
    moved = [t for t in m.graph.initializer if t.name in params]
    keep = [t for t in m.graph.initializer if t.name not in params]
    consts = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in moved]
    nodes = consts + list(m.graph.node)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def test_constant_node_parameters_dump_and_diff_like_initializers(messy):
    converted = _scales_as_constant_nodes(messy)
    assert sum(n.op_type == "Constant" for n in converted.graph.node) > 10
    assert dump_model(converted) == dump_model(messy)
    assert not diff_models(messy, converted).differ


def test_dump_and_diff_show_invalid_parameters_without_crashing():
    """dump/diff describe any graph, also one validate would refuse (an empty scale)."""
    b = Builder()
    x = b.input("x", [1, 4])
    b.output(b.qdq(x, 0.1, name="p"))
    m = b.build()
    for t in m.graph.initializer:
        if numpy_helper.to_array(t).dtype == np.float32:
            t.CopyFrom(numpy_helper.from_array(np.zeros(0, dtype=np.float32), t.name))
    assert "scale=float32[0]" in dump_model(m)
    assert diff_models(m, m).differ is False


def test_cli_dump_warns_on_a_graph_that_is_not_a_dag(tmp_path, messy, capsys):
    """A cycle or a missing initializer is still dumped, but never silently as 'canonical'."""
    good = tmp_path / "good.onnx"
    onnx.save(messy, good)
    assert cli.main(["dump", str(good)]) == 0
    assert capsys.readouterr().err == ""  # a valid graph: no warning

    no_init = onnx.ModelProto()
    no_init.CopyFrom(messy)
    lost = no_init.graph.initializer[0].name
    del no_init.graph.initializer[0]
    p = tmp_path / "missing-init.onnx"
    onnx.save(no_init, p)
    assert cli.main(["dump", str(p)]) == 0
    captured = capsys.readouterr()
    assert f"?{lost}" in captured.out
    assert "warning:" in captured.err and "not a valid graph" in captured.err
    assert "missing initializers?" in captured.err and lost in captured.err

    b = Builder()
    x = b.input("x", [1, 4])
    b.output(b.node("Relu", [x]))
    cyclic = b.build()
    first, second = (
        onnx.helper.make_node("Add", ["x", "loop_b"], ["loop_a"], name="loop_add"),
        onnx.helper.make_node("Relu", ["loop_a"], ["loop_b"], name="loop_relu"),
    )
    cyclic.graph.node.extend([first, second])
    p = tmp_path / "cycle.onnx"
    onnx.save(cyclic, p)
    assert cli.main(["dump", str(p)]) == 0
    err = capsys.readouterr().err
    assert "2 node(s) on or behind a cycle" in err and "loop_add" in err
    assert len(err.strip().splitlines()) == 1
