"""Deep graphs never hit Python's recursion limit.

A 100k-node chain goes through load_model / validate_model / save_model; a 20k-node chain (20x
deeper than the default recursion limit of 1000, which is what a recursive walk would hit)
through the whole ``qdqopt optimize`` command. The 100k-node optimize run is in
``benchmarks/bench_big_model.py`` (about 20 s on 2 cores: too slow for the suite).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import cli
from qdq_optimizer.model_io import load_model, save_model
from qdq_optimizer.validate import validate_model

try:
    from hardening_util import chain_model
except ImportError:  # tests/ imported as a package
    from tests.hardening_util import chain_model


def test_100k_nodes_load_validate_save(tmp_path: Path) -> None:
    limit = sys.getrecursionlimit()
    src = tmp_path / "chain.onnx"
    save_model(chain_model(100_000), src)
    start = time.perf_counter()
    model = load_model(src)
    assert validate_model(model) == []
    save_model(model, tmp_path / "copy.onnx")
    assert time.perf_counter() - start < 20
    assert len(load_model(tmp_path / "copy.onnx").graph.node) == 100_002
    assert sys.getrecursionlimit() == limit


@pytest.mark.skipif("optimize" not in cli.SUBCOMMANDS, reason="no optimize command")
def test_20k_node_chain_through_optimize(tmp_path: Path, capsys) -> None:
    src = tmp_path / "chain.onnx"
    save_model(chain_model(20_000), src)
    out = tmp_path / "out.onnx"
    rc = cli.main(["optimize", str(src), str(out), "--rules", "cleanup"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "recursion" not in err
    assert len(load_model(out).graph.node) >= 20_000


def test_over_2gb_code_path_with_small_limits(tmp_path: Path, monkeypatch, capsys) -> None:
    """The >2 GiB path (external data in, checks by path, external data out) on a small model:
    the size limits are lowered so the same code runs without writing gigabytes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from qdq_optimizer import model_io

    try:
        from hardening_util import qdq_conv_model
    except ImportError:
        from tests.hardening_util import qdq_conv_model

    src_dir = tmp_path / "in"
    src_dir.mkdir()
    m = qdq_conv_model(channels=64)
    w_q = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w_q"))
    onnx.save_model(  # note: moves m's weights out of m in place
        m, str(src_dir / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=64
    )
    monkeypatch.setattr(model_io, "PROTO_LIMIT", 2048)
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    rc = cli.main(["optimize", str(src_dir / "m.onnx"), str(out), "--rules", "cleanup"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.onnx", "o.onnx.data"]
    back = {t.name: numpy_helper.to_array(t) for t in load_model(out).graph.initializer}
    np.testing.assert_array_equal(back["w_q"], w_q)
