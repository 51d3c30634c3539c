"""What ``--help`` tells a new user: every option explained, the rule sets listed, repeats said."""

from __future__ import annotations

import importlib

import click
import pytest

import cli
from qdq_optimizer.ruleset import available_rulesets


def _commands() -> list[tuple[str, click.Command]]:
    out = []
    for name, (module, _) in cli.SUBCOMMANDS.items():
        command = importlib.import_module(module).command
        out.append((name, command))
        if isinstance(command, click.Group):
            out += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
    return out


def _help(argv: list[str], capsys) -> str:
    assert cli.main([*argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name,command", _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help(name: str, command: click.Command) -> None:
    bare = [
        "/".join(p.opts)
        for p in command.params
        if isinstance(p, click.Option) and not (p.help or "").strip()
    ]
    assert bare == [], f"qdqopt {name}: options without help: {bare}"


@pytest.mark.parametrize("name", ["optimize", "lint", "quantize", "sensitive", "export"])
def test_rules_help_lists_the_rule_sets(name: str, capsys) -> None:
    names = available_rulesets()
    assert {"tensorrt", "yolov7", "yolov7-tiny"} <= set(names)
    flat = "".join(_help([name], capsys).split())  # help text wraps anywhere, hyphens included
    assert "Available:" + ",".join(names) in flat
    assert "$QDQOPT_RULES_PATH" in flat


def test_rules_help_follows_qdqopt_rules_path(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "my-site.yaml").write_text("name: my-site\nextends: tensorrt\n")
    monkeypatch.setenv("QDQOPT_RULES_PATH", str(tmp_path))
    assert "my-site" in "".join(_help(["lint"], capsys).split())


@pytest.mark.parametrize("name", ["optimize", "lint"])
def test_ignore_says_it_repeats(name: str, capsys) -> None:
    text = " ".join(_help([name], capsys).split())
    assert "--ignore REGEX" in text and "repeatable" in text.split("--ignore REGEX", 1)[1][:120]


def test_sensitive_documents_its_checkpoint_options(capsys) -> None:
    text = " ".join(_help(["sensitive"], capsys).split())
    for option in ("--trust-checkpoint", "--yolov7-repo", "--rules", "--seed", "--no-progress"):
        assert option in text
    assert "a pickle can execute code" in text
    assert "same seed, same results" in text
    assert "the checkpoint's, else 640" in text  # --img-size default


def test_unknown_rule_set_names_the_choices_and_the_path_variable(tmp_path, capsys) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # never read: the rule set is resolved first
    assert cli.main(["lint", str(model), "--rules", "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qdqopt: error:")
    assert "unknown rule set 'no-such-set'" in err
    assert ", ".join(available_rulesets()) in err and "$QDQOPT_RULES_PATH" in err


def test_python_dash_m_qdq_optimizer_is_the_same_cli() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    res = subprocess.run([sys.executable, "-m", "qdq_optimizer", "lint", "--bogus"],
                         capture_output=True, text=True, env=env, cwd=repo, timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr == "qdqopt: error: No such option '--bogus' (see 'qdqopt lint --help')\n"
