"""Rule-set loading: lookup, extends, overrides, and every mistake caught before work starts."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import cli
from qdq_optimizer.errors import RuleSetError
from qdq_optimizer.ruleset import RULES_DIR, available_rulesets, load_ruleset


def _write(path: Path, head: str, *rules: str) -> Path:
    path.write_text(textwrap.dedent(head).lstrip() + "".join(rules))
    return path


RULE = """
  - id: {id}
    why: {why}
    match: {{op: QuantizeLinear}}
    action: merge_duplicates
"""


def test_builtin_cleanup_by_name_and_by_path():
    by_name = load_ruleset("cleanup")
    by_path = load_ruleset(str(RULES_DIR / "cleanup.yaml"))
    ids = [r.id for r in by_name.rules]
    assert ids == [
        "constant-to-initializer",
        "remove-identity",
        "fold-constant-layout",
        "fold-dq-constant",
        "zero-scale-channels",
        "collapse-dq-q",
        "merge-duplicate-q",
        "merge-duplicate-dq",
        "drop-dead-qdq",
    ]
    assert [r.id for r in by_path.rules] == ids
    assert by_name.chain == ["cleanup"]
    assert "cleanup" in available_rulesets()
    assert all(r.why and "\n" not in r.why for r in by_name.rules)


def test_every_shipped_rule_set_loads():
    for name in available_rulesets():
        rs = load_ruleset(name)
        assert rs.rules, name


def test_extends_override_disable_and_settings(tmp_path):
    _write(
        tmp_path / "base.yaml",
        """
        ignore: ['^head\\.']
        settings: {a: 1, b: 1}
        rules:
        """,
        RULE.format(id="one", why="first"),
        RULE.format(id="two", why="second"),
        RULE.format(id="three", why="third"),
    )
    child = _write(
        tmp_path / "child.yaml",
        """
        extends: base
        ignore: ['^tail$']
        settings: {b: 2}
        disable: [three]
        rules:
        """,
        RULE.format(id="two", why="overridden"),
        RULE.format(id="four", why="new"),
        "  - id: one\n    enabled: false\n",
    )
    rs = load_ruleset(str(child))
    assert [r.id for r in rs.rules] == ["two", "four"]
    assert rs.rule("two").why == "overridden"
    assert rs.settings == {"a": 1, "b": 2}
    assert [p.pattern for p in rs.ignore] == ["^head\\.", "^tail$"]
    assert rs.chain == ["base", "child"]


def test_extends_cycle_names_the_chain(tmp_path):
    _write(tmp_path / "a.yaml", "extends: b\nrules: []\n")
    _write(tmp_path / "b.yaml", "extends: [a]\nrules: []\n")
    with pytest.raises(RuleSetError, match=r"extends cycle: a -> b -> a"):
        load_ruleset(str(tmp_path / "a.yaml"))


def test_rules_path_env_var(tmp_path, monkeypatch):
    _write(tmp_path / "mine.yaml", "extends: cleanup\nrules:\n", RULE.format(id="x", why="y"))
    monkeypatch.setenv("QDQOPT_RULES_PATH", str(tmp_path))
    rs = load_ruleset("mine")
    assert rs.chain == ["cleanup", "mine"] and rs.rules[-1].id == "x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  - id: a\n    why: w\n    match: {op: Relu}\n    action: nope\n",
            "unknown action 'nope'",
        ),
        (
            "rules:\n  - id: a\n    why: w\n    match: {op: Relu}\n    action: collapse_dq_q\n    colour: red\n",
            "unknown rule field",
        ),
        (
            "rules:\n  - id: a\n    why: w\n    match: {op: Relu, name: '(['}\n    action: collapse_dq_q\n",
            "bad regex",
        ),
        ("ignore: ['(']\nrules: []\n", "bad regex in 'ignore'"),
        (
            "rules:\n  - id: a\n    why: w\n    match: {op: Relu}\n    action: collapse_dq_q\n    params: {x: 1}\n",
            "unknown param",
        ),
        (
            "rules:\n  - id: a\n    why: w\n    match: {opp: Relu}\n    action: collapse_dq_q\n",
            "unknown match field",
        ),
        (
            "rules:\n  - id: a\n    why: w\n    match: {name: x}\n    action: collapse_dq_q\n",
            "anchor 'op'",
        ),
        (
            "rules:\n  - id: a\n    why: w\n    match: {scope: graph, op: Relu}\n    action: collapse_dq_q\n",
            "graph-scope",
        ),
        (
            "rules:\n  - id: a\n    match: {op: Relu}\n    action: collapse_dq_q\n",
            "'why' must be one",
        ),
        (
            "rules:\n  - id: a\n    why: w\n    match: {op: Relu, consumers: {count: -1}}\n    action: collapse_dq_q\n",
            "non-negative",
        ),
        ("rules:" + RULE.format(id="a", why="w") * 2, "duplicate rule id"),
        ("disable: [ghost]\nrules: []\n", "unknown rule 'ghost'"),
        ("extends: no-such-set\n", "unknown rule set 'no-such-set'"),
        ("rules: [1, 2\n", "invalid YAML"),
        ("- just a list\n", "must be a mapping"),
        ("colour: red\n", "unknown rule set field"),
    ],
)
def test_mistakes_are_rule_set_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RuleSetError, match=message):
        load_ruleset(str(path))


def test_unknown_name_lists_available():
    with pytest.raises(RuleSetError, match=r"unknown rule set 'zzz' \(available: .*cleanup"):
        load_ruleset("zzz")


def test_cli_reports_bad_rules_before_reading_model(tmp_path, capsys):
    bad = _write(
        tmp_path / "bad.yaml",
        "rules:\n  - id: a\n    why: w\n    match: {op: X}\n    action: nope\n",
    )
    out = tmp_path / "out.onnx"
    # the input does not even exist: the rule error must come first
    code = cli.main(["optimize", str(tmp_path / "missing.onnx"), str(out), "--rules", str(bad)])
    assert code == 2
    assert "unknown action 'nope'" in capsys.readouterr().err
    assert not out.exists()
