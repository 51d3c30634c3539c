"""Hostile rule files, engine reports and checkpoints: refused with exit 2, nothing executed.

The per-area tests cover their own parsers; this file is the cross-cutting proof that the CLI
turns each hostile input into one error line and exit 2 (never 3, never code execution).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import cli

try:
    from hardening_util import qdq_conv_model
    from test_exit_codes import synth_data
except ImportError:  # tests/ imported as a package
    from tests.hardening_util import qdq_conv_model
    from tests.test_exit_codes import synth_data

__all__ = ["synth_data"]  # a session fixture shared with test_exit_codes


def _has(name: str) -> bool:
    return importlib.util.find_spec(cli.SUBCOMMANDS[name][0]) is not None


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def _assert_refused(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith(("qdqopt: ", "Error: "))]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], err


@pytest.fixture()
def model(tmp_path: Path) -> str:
    p = tmp_path / "m.onnx"
    p.write_bytes(qdq_conv_model().SerializeToString())
    return str(p)


# ------------------------------------------------------------------------------- rule files
RULE_FILES = {
    "python-tag": (
        "name: evil\nrules:\n  - !!python/object/apply:os.system ['touch {marker}']\n",
        "YAML",
    ),
    "extends-itself": ("name: self\nextends: ./rules.yaml\nrules: []\n", "cycle"),
    "bad-regex": (
        "name: r\nrules:\n  - id: x\n    why: y\n    match: {{op: Conv, name: '([a'}}\n"
        "    action: drop_dead_qdq\n",
        "regex",
    ),
    "unknown-action": (
        "name: r\nrules:\n  - id: x\n    why: y\n    match: {{op: Conv}}\n    action: nope\n",
        "unknown action",
    ),
    "unknown-field": (
        "name: r\nrules:\n  - id: x\n    why: y\n    colour: red\n    match: {{op: Conv}}\n"
        "    action: drop_dead_qdq\n",
        "colour",
    ),
    "not-a-mapping": ("- just\n- a list\n", ""),
    "deeply-nested": ("name: deep\nrules: " + "[" * 20000 + "]" * 20000 + "\n", ""),
    "binary": ("\x00\x01\x02garbage", ""),
}


@pytest.mark.parametrize("case", list(RULE_FILES))
def test_hostile_rule_file(case: str, model: str, tmp_path: Path, capsys) -> None:
    if not _has("lint"):
        pytest.skip("lint not written yet")
    marker = tmp_path / "PWNED"
    text, needle = RULE_FILES[case]
    rules = tmp_path / "rules.yaml"
    rules.write_text(text.format(marker=marker))
    rc, err = _run(["lint", model, "--rules", str(rules)], capsys)
    _assert_refused(rc, err, needle)
    assert not marker.exists(), "the rule file executed code"


# ------------------------------------------------------------------------------- engine reports
def test_deeply_nested_report(tmp_path: Path, capsys) -> None:
    report = tmp_path / "deep.graph.json"
    report.write_text("[" * 100_000 + "]" * 100_000)
    rc, err = _run(["inspect", str(report)], capsys)
    _assert_refused(rc, err)


def test_oversized_report_refused_before_reading(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("QDQOPT_INSPECT_MAX_MB", "1")
    report = tmp_path / "huge.graph.json"
    with report.open("w") as f:
        f.write('{"Layers": [')
        f.write(",".join(['{"Name": "l", "LayerType": "Reformat"}'] * 60_000))
        f.write("]}")
    assert report.stat().st_size > 2**20
    rc, err = _run(["inspect", str(report)], capsys)
    _assert_refused(rc, err, "limit")


@pytest.mark.parametrize(
    "text",
    ['{"Layers": [', "null", '"Layers"', "42", '{"Layers": 7}', '{"Layers": [1, 2]}', "\ufeff"],
    ids=["truncated", "null", "string", "number", "layers-number", "layers-ints", "bom-only"],
)
def test_malformed_reports(text: str, tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.graph.json"
    report.write_text(text)
    rc, err = _run(["inspect", str(report)], capsys)
    _assert_refused(rc, err)


# ------------------------------------------------------------------------------- checkpoints
@pytest.fixture()
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    torch = pytest.importorskip("torch")
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ckpt = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, ckpt)
    return ckpt, marker


@pytest.mark.parametrize("name", ["export", "eval", "quantize", "sensitive"])
def test_pickled_checkpoint_needs_trust(
    name: str, evil_checkpoint, synth_data: Path, tmp_path: Path, capsys
) -> None:
    if not _has(name):
        pytest.skip(f"{name} not written yet")
    ckpt, marker = evil_checkpoint
    data = synth_data
    argv = {
        "export": ["export", str(ckpt), "--save", str(tmp_path / "o.onnx")],
        "eval": ["eval", str(ckpt), "--data", str(data)],
        "quantize": ["quantize", str(ckpt), "--data", str(data), "--ptq", str(tmp_path / "p.pt")],
        "sensitive": ["sensitive", str(ckpt), "--data", str(data)],
    }[name]
    rc, err = _run(argv, capsys)
    _assert_refused(rc, err, "--trust-checkpoint")
    assert not marker.exists(), "the checkpoint executed code"
