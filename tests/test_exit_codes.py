"""Exit codes of every command in cli.SUBCOMMANDS: 0 ok, 1 check failed, 2 bad usage or input,
3 internal error (one line with a --debug hint; --debug anywhere prints the traceback).

Every command in ``cli.SUBCOMMANDS`` must have a row in ``INVOCATIONS``; a new command without one
fails ``test_every_command_is_covered``.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import onnx
import pytest

import cli

try:
    from hardening_util import qdq_conv_model
except ImportError:  # tests/ imported as a package
    from tests.hardening_util import qdq_conv_model

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ROOT / "fixtures" / "engines"

# name -> argv with placeholders: {in} a valid input, {in2} a second valid input (different),
# {out} an output path, {dir} the work folder. The first {in} is the primary input.
INVOCATIONS: dict[str, list[str]] = {
    "optimize": ["optimize", "{in}", "{out}.onnx", "--rules", "cleanup"],
    "lint": ["lint", "{in}", "--rules", "cleanup"],
    "dump": ["dump", "{in}"],
    "diff": ["diff", "{in}", "{in2}"],
    "inspect": ["inspect", "{report}"],
    "build": ["build", "{in}", "--engine", "{out}.plan"],
    "train": [
        "train", "--data", "{data}", "--save", "{out}.pt",
        "--epochs", "1", "--img-size", "32", "--no-progress",
    ],
    "quantize": ["quantize", "{ckpt}", "--data", "{data}", "--ptq", "{out}.pt"],
    "export": ["export", "{ckpt}", "--save", "{out}.onnx"],
    "sensitive": ["sensitive", "{ckpt}", "--data", "{data}"],
    "eval": ["eval", "{in}", "--data", "{data}"],
    "data": ["data", "synth", "{out}-synth", "-n", "1", "--size", "32"],
}  # fmt: skip
# Commands that read a file given on the command line, and which placeholder that file is.
PRIMARY_INPUT = {
    "optimize": "in",
    "lint": "in",
    "dump": "in",
    "diff": "in",
    "inspect": "report",
    "build": "in",
    "quantize": "ckpt",
    "export": "ckpt",
    "sensitive": "ckpt",
    "eval": "in",
    "train": "data",
}


def importable(name: str) -> bool:
    """True when the command's module exists (False means cli shows an 'unavailable' stub)."""
    try:
        importlib.import_module(cli.SUBCOMMANDS[name][0])
    except ModuleNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A one-image COCO-format data set made by ``qdqopt data synth`` (skips if unavailable)."""
    folder = tmp_path_factory.mktemp("synth") / "data"
    if not importable("data") or cli.main(
        ["data", "synth", str(folder), "-n", "2", "--size", "32"]
    ):
        folder.mkdir(parents=True, exist_ok=True)  # commands then refuse it: still exit 2
    return folder


@pytest.fixture()
def work(tmp_path: Path, synth_data: Path) -> dict[str, str]:
    """Valid inputs in a temp folder (never the repo's own files) plus placeholders."""
    m = qdq_conv_model()
    (tmp_path / "in.onnx").write_bytes(m.SerializeToString())
    (tmp_path / "in2.onnx").write_bytes(qdq_conv_model(act_scale=0.07).SerializeToString())
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    report = tmp_path / "engine.graph.json"
    src = ENGINES / "trt86-reformat-metadata.graph.json"
    if src.exists():
        shutil.copyfile(src, report)
    else:  # a tiny detailed report of our own
        report.write_text(
            '{"Layers": [{"Name": "conv", "LayerType": "CaskConvolution", "Inputs": '
            '[{"Name": "x", "Format/Datatype": "Int8"}], "Outputs": [{"Name": "y", '
            '"Format/Datatype": "Int8"}]}], "Bindings": ["x", "y"]}'
        )
    return {
        "in": str(tmp_path / "in.onnx"),
        "in2": str(tmp_path / "in2.onnx"),
        "ckpt": str(tmp_path / "ckpt.pt"),
        "report": str(report),
        "out": str(tmp_path / "out"),
        "dir": str(tmp_path),
        "data": str(synth_data),
    }


def fill(argv: list[str], values: dict[str, str]) -> list[str]:
    return [a.format(**values) for a in argv]


def run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.err


def assert_one_error_line(err: str) -> None:
    """Exactly one line on stderr, the documented ``qdqopt: error: ...`` (usage errors too)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("qdqopt: error: "), err
    assert "Traceback" not in err and "Usage:" not in err


def test_every_command_is_covered() -> None:
    assert set(INVOCATIONS) == set(cli.SUBCOMMANDS)


@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_help_exits_0_with_examples_and_exit_codes(name: str, capsys) -> None:
    rc = cli.main([name, "--help"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Usage:" in out
    examples = out.split("Examples:", 1)[1].split("Exit codes:", 1)[0]
    assert f"qdqopt {name} " in examples  # at least one example of this very command
    codes = out.split("Exit codes:", 1)[1]
    assert "0  " in codes and "2  bad usage" in codes and "3  internal error" in codes


def test_top_level_help_and_version(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "Exit codes:" in out and "1  a check found problems" in out
    assert cli.main(["--version"]) == 0
    capsys.readouterr()
    assert cli.main(["no-such-command"]) == 2
    assert_one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_bad_usage_exits_2(name: str, capsys) -> None:
    rc, err = run([name, "--no-such-option-xyz"], capsys)
    assert rc == 2
    assert_one_error_line(err)
    assert "--no-such-option-xyz" in err and f"'qdqopt {name} --help'" in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["optimize", "{dir}", "{out}.onnx"], "is a directory"),  # a folder as IN
        (["optimize", "{in}", "{dir}"], "is a directory"),  # a folder as OUT
        (["lint", "{in}", "--format", "yaml"], "'yaml' is not one of"),
        (["dump", "{in}", "--precision", "99"], "--precision"),
        (["lint"], "Missing argument 'IN'"),
        (["diff", "{in}"], "Missing argument 'B'"),
        (["export", "{ckpt}"], "Missing option '--save'"),
    ],
)
def test_usage_errors_are_one_line(argv, needle, work, capsys) -> None:
    rc, err = run(fill(argv, work), capsys)
    assert rc == 2
    assert_one_error_line(err)
    assert needle in err
    assert not Path(work["out"] + ".onnx").exists()


@pytest.mark.parametrize("name", sorted(PRIMARY_INPUT))
def test_missing_input_exits_2(name: str, work: dict[str, str], capsys) -> None:
    key = PRIMARY_INPUT[name]
    values = dict(work, **{key: str(Path(work["dir"]) / "missing" / f"nope.{key}")})
    rc, err = run(fill(INVOCATIONS[name], values), capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    assert_one_error_line(err)
    assert not Path(work["out"] + ".onnx").exists()


@pytest.mark.parametrize("name", sorted(PRIMARY_INPUT))
def test_unreadable_input_exits_2(name: str, work: dict[str, str], capsys) -> None:
    """A folder where a file should be, and a file of garbage bytes."""
    key = PRIMARY_INPUT[name]
    for bad in (work["dir"], str(Path(work["dir"]) / "garbage.bin")):
        Path(work["dir"], "garbage.bin").write_bytes(b"\x00\xffgarbage" * 7)
        rc, err = run(fill(INVOCATIONS[name], dict(work, **{key: bad})), capsys)
        assert rc == 2, (bad, err)
        assert "Traceback" not in err
        assert_one_error_line(err)


@pytest.mark.parametrize("name", ["optimize"])
def test_output_equal_to_input_exits_2(name: str, work: dict[str, str], capsys) -> None:
    if not importable(name):
        pytest.skip(f"{name} not written yet")
    before = Path(work["in"]).read_bytes()
    rc, err = run(["optimize", work["in"], work["in"], "--rules", "cleanup"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert Path(work["in"]).read_bytes() == before


def test_output_in_missing_folder_exits_2(work: dict[str, str], capsys) -> None:
    if not importable("optimize"):
        pytest.skip("optimize not written yet")
    out = str(Path(work["dir"]) / "no" / "such" / "out.onnx")
    rc, err = run(["optimize", work["in"], out, "--rules", "cleanup"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert not Path(out).parent.exists()


def _checks_failing(work: dict[str, str]) -> dict[str, list[str]]:
    """Invocations whose check finds problems (exit 1)."""
    return {
        "diff": ["diff", work["in"], work["in2"]],
        "inspect": ["inspect", work["report"], "--expect", "int8", "--summary-only"],
        "lint": ["lint", work["dangling"], "--rules", "cleanup"],
    }


@pytest.fixture()
def dangling_pair(work: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A model with a Q/DQ pair whose DQ feeds nothing: the cleanup rule set's lint finds it."""
    m = qdq_conv_model()
    m.graph.node.append(
        onnx.helper.make_node(
            "QuantizeLinear", ["relu", "mid_scale", "mid_zp"], ["dq_q"], name="q_x"
        )
    )
    m.graph.node.append(
        onnx.helper.make_node(
            "DequantizeLinear", ["dq_q", "mid_scale", "mid_zp"], ["dq_x"], name="dq_x"
        )
    )
    p = tmp_path / "dangling.onnx"
    p.write_bytes(m.SerializeToString())
    return dict(work, dangling=str(p))


@pytest.mark.parametrize("name", ["diff", "inspect", "lint"])
def test_check_failed_exits_1(name: str, dangling_pair: dict[str, str], capsys) -> None:
    if not importable(name):
        pytest.skip(f"{name} not written yet")
    rc, err = run(_checks_failing(dangling_pair)[name], capsys)
    assert rc == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["diff", "dump", "inspect"])
def test_check_passing_exits_0(name: str, work: dict[str, str], capsys) -> None:
    if not importable(name):
        pytest.skip(f"{name} not written yet")
    argv = {
        "diff": ["diff", work["in"], work["in"]],
        "dump": ["dump", work["in"]],
        "inspect": ["inspect", work["report"], "--summary-only"],
    }[name]
    rc, err = run(argv, capsys)
    assert rc == 0, err


def _boom(*args, **kwargs):
    raise RuntimeError("simulated bug")


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_internal_error_exits_3(
    name: str, debug: bool, work: dict[str, str], monkeypatch, capsys
) -> None:
    """A bug inside a command: exit 3, one line with the --debug hint; --debug shows it."""
    if not importable(name):
        # The 'unavailable' stub is what users get; it must exit 2 with one line.
        rc, err = run(fill(INVOCATIONS[name], work), capsys)
        assert rc == 2 and "unavailable" in err and "Traceback" not in err
        return
    command = importlib.import_module(cli.SUBCOMMANDS[name][0]).command
    monkeypatch.setattr(command, "callback", _boom)
    argv = fill(INVOCATIONS[name], work)
    if debug:
        argv.append("--debug")  # accepted anywhere on the line
    rc, err = run(argv, capsys)
    assert rc == 3, err
    assert "simulated bug" in err
    if debug:
        assert "Traceback" in err
    else:
        assert "Traceback" not in err
        assert "--debug" in err
        assert len(err.strip().splitlines()) == 1


def _patch_everywhere(monkeypatch, original, replacement) -> int:
    """Replace a library function in every loaded qdq_optimizer/trainer module that holds it."""
    count = 0
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith(("qdq_optimizer", "trainer")):
            continue
        for attr, value in list(vars(mod).items()):
            if value is original:
                monkeypatch.setattr(mod, attr, replacement)
                count += 1
    return count


@pytest.mark.parametrize("name", ["optimize", "lint", "dump", "diff"])
def test_library_bug_exits_3(name: str, work: dict[str, str], monkeypatch, capsys) -> None:
    """A library function (not the command) failing unexpectedly is still exit 3, one line."""
    if not importable(name):
        pytest.skip(f"{name} not written yet")
    from qdq_optimizer import model_io

    assert _patch_everywhere(monkeypatch, model_io.load_model, _boom) >= 1
    rc, err = run(fill(INVOCATIONS[name], work), capsys)
    assert rc == 3, err
    assert "simulated bug" in err and "--debug" in err and "Traceback" not in err


def test_recursion_error_exits_3(work: dict[str, str], monkeypatch, capsys) -> None:
    command = importlib.import_module(cli.SUBCOMMANDS["inspect"][0]).command

    def deep(*a, **k):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(command, "callback", deep)
    rc, err = run(["inspect", work["report"]], capsys)
    assert rc == 3 and "recursion" in err and "--debug" in err
