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
