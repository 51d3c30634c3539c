"""YAML rule sets: find, load, validate and flatten (``extends``) them before any work starts.

``--rules NAME`` looks for ``NAME.yaml`` in the folders of ``QDQOPT_RULES_PATH`` (os.pathsep
separated) and then in the built-in rule sets: ``qdq_optimizer/rules`` in an installed wheel (setup.py
maps the repository's ``rules/`` there), the repository's ``rules/`` in a source or editable
checkout. ``--rules PATH`` loads a user file.
Every mistake (unknown field or action, bad regex, duplicate id, extends cycle) is a RuleSetError
naming the file and rule, raised at load time. The schema is documented in docs/rules.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .actions import get_action, registered_actions
from .errors import RuleSetError

RULES_PATH_ENV = "QDQOPT_RULES_PATH"


def _builtin_rules_dir() -> Path:
    """The built-in rule sets: inside the installed package, else the checkout's ``rules/``."""
    here = Path(__file__).resolve().parent
    packaged = here / "rules"
    if (packaged / "tensorrt.yaml").is_file():
        return packaged
    return here.parent / "rules"  # source or editable checkout (rules/ beside the package)


RULES_DIR = _builtin_rules_dir()

_SET_KEYS = {"name", "description", "extends", "ignore", "settings", "disable", "rules"}
_RULE_KEYS = {"id", "why", "match", "action", "params", "enabled", "before"}
_MATCH_KEYS = {"scope", "op", "name", "not_name", "inputs", "any_input", "consumers"}
_SPEC_KEYS = {"op", "name", "not_name", "constant", "graph_input"}
_CONSUMER_KEYS = {"all", "any", "none", "count", "min", "max", "graph_output"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NodeSpec:
    """Constraint on the node producing a tensor (or the tensor itself)."""

    ops: frozenset[str] | None = None
    name: re.Pattern | None = None
    not_name: re.Pattern | None = None
    constant: bool | None = None
    graph_input: bool | None = None


@dataclass(frozen=True)
class ConsumerSpec:
    """Constraint on the consumers of a node's outputs."""

    all: NodeSpec | None = None
    any: NodeSpec | None = None
    none: NodeSpec | None = None
    count: int | None = None
    min: int | None = None
    max: int | None = None
    graph_output: bool | None = None


@dataclass(frozen=True)
class Match:
    scope: str = "node"  # "node" or "graph"
    ops: frozenset[str] | None = None
    name: re.Pattern | None = None
    not_name: re.Pattern | None = None
    inputs: tuple[NodeSpec | None, ...] = ()
    any_input: NodeSpec | None = None
    consumers: ConsumerSpec | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    why: str
    match: Match
    action: str
    params: dict[str, Any]
    source: str  # file the rule came from
    before: str | None = None  # the rule id it must run in front of (kept through `extends`)


@dataclass
class RuleSet:
    name: str
    path: Path | None
    rules: list[Rule] = field(default_factory=list)
    ignore: list[re.Pattern] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    chain: list[str] = field(default_factory=list)  # the extends chain, base first
    description: str = ""

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


# ---------------------------------------------------------------------- finding files
def search_dirs() -> list[Path]:
    """Folders searched for ``NAME.yaml``: $QDQOPT_RULES_PATH entries first, then the built-ins."""
    dirs = [Path(p) for p in os.environ.get(RULES_PATH_ENV, "").split(os.pathsep) if p]
    dirs.append(RULES_DIR)
    return dirs


def available_rulesets() -> list[str]:
    """Names ``--rules NAME`` accepts, from every searched folder, sorted."""
    names: dict[str, None] = {}
    for d in search_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")):
                names.setdefault(p.stem, None)
    return sorted(names)


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec or os.sep in spec


def resolve(spec: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """The file a ``--rules`` value or an ``extends`` entry names."""
    text = os.fspath(spec)
    if _looks_like_path(text):
        p = Path(text)
        if not p.is_absolute() and relative_to is not None and not p.exists():
            p = relative_to / p
        if not p.is_file():
            raise RuleSetError(f"rule set file not found: {text}")
        return p
    if not _ID_RE.match(text):
        raise RuleSetError(f"invalid rule set name: {text!r}")
    if relative_to is not None and (relative_to / f"{text}.yaml").is_file():
        return relative_to / f"{text}.yaml"
    for d in search_dirs():
        if (d / f"{text}.yaml").is_file():
            return d / f"{text}.yaml"
    known = ", ".join(available_rulesets()) or f"none: no built-in rule sets in {RULES_DIR}"
    raise RuleSetError(
        f"unknown rule set '{text}' (available: {known}; more folders via ${RULES_PATH_ENV}, "
        "or pass a .yaml path)"
    )


# ---------------------------------------------------------------------- loading
def load_ruleset(spec: str | os.PathLike) -> RuleSet:
    """Load a rule set by name or path, resolve ``extends`` and validate everything."""
    path = resolve(spec)
    return _load(path, [])


MAX_RULE_FILE_BYTES = 1 << 20  # rule sets are a few KB; refuse anything absurd unread


def _read_yaml(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_RULE_FILE_BYTES:
            raise RuleSetError(f"{path}: rule set larger than {MAX_RULE_FILE_BYTES} bytes")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RuleSetError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise RuleSetError(f"{path}: YAML nested too deeply") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleSetError(f"cannot read rule set {path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RuleSetError(f"{path}: a rule set must be a mapping with a 'rules' list")
    return data


def _load(path: Path, stack: list[Path]) -> RuleSet:
    real = path.resolve()
    if real in stack:
        chain = " -> ".join(p.stem for p in [*stack[stack.index(real) :], real])
        raise RuleSetError(f"extends cycle: {chain}")
    data = _read_yaml(path)
    where = str(path)
    _check_keys(data, _SET_KEYS, where, "rule set")

    base = RuleSet(name=str(data.get("name") or path.stem), path=path)
    extends = data.get("extends") or []
    if isinstance(extends, str):
        extends = [extends]
    if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
        raise RuleSetError(f"{where}: 'extends' must be a name or a list of names")
    for parent_spec in extends:
        parent = _load(resolve(parent_spec, relative_to=path.parent), [*stack, real])
        _merge(base, parent)

    base.description = str(data.get("description") or "")
    for pattern in _str_list(data.get("ignore"), where, "ignore"):
        base.ignore.append(_regex(pattern, where, "ignore"))
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise RuleSetError(f"{where}: 'settings' must be a mapping")
    base.settings.update(settings)

    for rule_id in _str_list(data.get("disable"), where, "disable"):
        if base.rule(rule_id) is None:
            raise RuleSetError(f"{where}: 'disable' names unknown rule '{rule_id}'")
        base.rules = [r for r in base.rules if r.id != rule_id]

    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list):
        raise RuleSetError(f"{where}: 'rules' must be a list")
    own_ids: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule, enabled = _parse_rule(raw, where, i)
        if rule.id in own_ids:
            raise RuleSetError(f"{where}: duplicate rule id '{rule.id}'")
        own_ids.add(rule.id)
        idx = next((k for k, r in enumerate(base.rules) if r.id == rule.id), None)
        if not enabled:
            if idx is not None:
                del base.rules[idx]
        elif idx is not None:
            base.rules[idx] = rule  # override an inherited rule in place
        else:
            base.rules.append(rule)
        if rule.before is not None:
            _place_before(base, rule, where)
    base.chain.append(base.name)
    return base


def _place_before(ruleset: RuleSet, rule: Rule, where: str) -> None:
    """Move ``rule`` in front of the rule with id ``rule.before`` (inherited or earlier in the
    file): a rule that must see the graph before an inherited rule rewrites it."""
    ruleset.rules = [r for r in ruleset.rules if r is not rule]
    idx = next((k for k, r in enumerate(ruleset.rules) if r.id == rule.before), None)
    if idx is None:
        raise RuleSetError(
            f"{where}: rule '{rule.id}': 'before' names unknown rule '{rule.before}'"
        )
    ruleset.rules.insert(idx, rule)


def _merge(into: RuleSet, parent: RuleSet) -> None:
    """Add ``parent``'s rules (a later parent of ``extends: [a, b]`` overrides in place); a new
    rule with ``before:`` keeps its place in front of that rule when another parent has it, so
    ``extends: [yolo11, attention]`` still runs softmax-output-qdq before float-islands."""
    for r in parent.rules:
        idx = next((k for k, x in enumerate(into.rules) if x.id == r.id), None)
        if idx is not None:
            into.rules[idx] = r
            continue
        at = next((k for k, x in enumerate(into.rules) if r.before and x.id == r.before), None)
        if at is None:
            into.rules.append(r)
        else:
            into.rules.insert(at, r)
    into.ignore.extend(
        p for p in parent.ignore if p.pattern not in {x.pattern for x in into.ignore}
    )
    into.settings.update(parent.settings)
    into.chain.extend(c for c in parent.chain if c not in into.chain)


def _parse_rule(raw: Any, where: str, index: int) -> tuple[Rule, bool]:
    if not isinstance(raw, dict):
        raise RuleSetError(f"{where}: rule #{index + 1} must be a mapping")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        raise RuleSetError(f"{where}: rule #{index + 1} needs an 'id' (letters, digits, _ . -)")
    at = f"{where}: rule '{rid}'"
    _check_keys(raw, _RULE_KEYS, at, "rule")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleSetError(f"{at}: 'enabled' must be true or false")
    why = raw.get("why")
    if enabled and (not isinstance(why, str) or not why.strip() or "\n" in why.strip()):
        raise RuleSetError(f"{at}: 'why' must be one non-empty line")
    action_name = raw.get("action")
    if not enabled and action_name is None:
        return Rule(rid, "", Match(), "", {}, where), False
    if not isinstance(action_name, str):
        raise RuleSetError(f"{at}: 'action' must be the name of a registered action")
    action = get_action(action_name)
    if action is None:
        known = ", ".join(sorted(registered_actions()))
        raise RuleSetError(f"{at}: unknown action '{action_name}' (known: {known})")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise RuleSetError(f"{at}: 'params' must be a mapping")
    if action.params is not None:
        unknown = sorted(set(params) - set(action.params))
        if unknown:
            allowed = ", ".join(sorted(action.params)) or "none"
            raise RuleSetError(
                f"{at}: unknown param(s) {', '.join(unknown)} for action '{action_name}' "
                f"(allowed: {allowed})"
            )
        params = {**action.params, **params}
    match = _parse_match(raw.get("match"), at)
    before = raw.get("before") if enabled else None  # a disabled rule is dropped anyway
    if before is not None and (not isinstance(before, str) or before == rid):
        raise RuleSetError(f"{at}: 'before' must name another rule's id")
    rule = Rule(rid, str(why or "").strip(), match, action_name, dict(params), where, before)
    return rule, enabled


def _parse_match(raw: Any, at: str) -> Match:
    if not isinstance(raw, dict):
        raise RuleSetError(f"{at}: 'match' must be a mapping (e.g. {{op: QuantizeLinear}})")
    _check_keys(raw, _MATCH_KEYS, f"{at} match", "match")
    scope = raw.get("scope", "node")
    if scope not in ("node", "graph"):
        raise RuleSetError(f"{at}: match 'scope' must be 'node' or 'graph'")
    if scope == "graph":
        extra = sorted(set(raw) - {"scope"})
        if extra:
            raise RuleSetError(f"{at}: a graph-scope match takes no {', '.join(extra)}")
        return Match(scope="graph")
    ops = _ops(raw.get("op"), at)
    if ops is None:
        raise RuleSetError(f"{at}: match needs an anchor 'op' (or scope: graph)")
    inputs_raw = raw.get("inputs") or []
    if not isinstance(inputs_raw, list):
        raise RuleSetError(f"{at}: match 'inputs' must be a list (one entry per input, or null)")
    consumers = raw.get("consumers")
    return Match(
        scope="node",
        ops=ops,
        name=_opt_regex(raw.get("name"), at, "name"),
        not_name=_opt_regex(raw.get("not_name"), at, "not_name"),
        inputs=tuple(None if s is None else _parse_spec(s, at, "inputs") for s in inputs_raw),
        any_input=None
        if raw.get("any_input") is None
        else _parse_spec(raw["any_input"], at, "any_input"),
        consumers=None if consumers is None else _parse_consumers(consumers, at),
    )


def _parse_spec(raw: Any, at: str, what: str) -> NodeSpec:
    if isinstance(raw, str):
        raw = {"op": raw}
    if not isinstance(raw, dict):
        raise RuleSetError(
            f"{at}: '{what}' entries must be a mapping like {{op: DequantizeLinear}}"
        )
    _check_keys(raw, _SPEC_KEYS, f"{at} {what}", what)
    for key in ("constant", "graph_input"):
        if key in raw and not isinstance(raw[key], bool):
            raise RuleSetError(f"{at}: '{what}.{key}' must be true or false")
    return NodeSpec(
        ops=_ops(raw.get("op"), at),
        name=_opt_regex(raw.get("name"), at, f"{what}.name"),
        not_name=_opt_regex(raw.get("not_name"), at, f"{what}.not_name"),
        constant=raw.get("constant"),
        graph_input=raw.get("graph_input"),
    )


def _parse_consumers(raw: Any, at: str) -> ConsumerSpec:
    if not isinstance(raw, dict):
        raise RuleSetError(f"{at}: 'consumers' must be a mapping (all/any/none/count/min/max)")
    _check_keys(raw, _CONSUMER_KEYS, f"{at} consumers", "consumers")
    ints = {}
    for key in ("count", "min", "max"):
        v = raw.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise RuleSetError(f"{at}: 'consumers.{key}' must be a non-negative integer")
        ints[key] = v
    go = raw.get("graph_output")
    if go is not None and not isinstance(go, bool):
        raise RuleSetError(f"{at}: 'consumers.graph_output' must be true or false")
    spec = {
        k: None if raw.get(k) is None else _parse_spec(raw[k], at, f"consumers.{k}")
        for k in ("all", "any", "none")
    }
    return ConsumerSpec(graph_output=go, **spec, **ints)


# ---------------------------------------------------------------------- small validators
def _check_keys(raw: dict, allowed: set[str], where: str, what: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise RuleSetError(
            f"{where}: unknown {what} field(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _ops(raw: Any, at: str) -> frozenset[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(o, str) and o for o in raw):
        raise RuleSetError(f"{at}: 'op' must be an op type or a list of op types")
    return frozenset(raw)


def _str_list(raw: Any, where: str, key: str) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise RuleSetError(f"{where}: '{key}' must be a list of strings")
    return raw


def _regex(pattern: str, where: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RuleSetError(f"{where}: bad regex in '{key}': {pattern!r} ({exc})") from None


def _opt_regex(raw: Any, at: str, key: str) -> re.Pattern | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise RuleSetError(f"{at}: '{key}' must be a regex string")
    return _regex(raw, at, key)


def compile_ignore(
    patterns: list[str] | tuple[str, ...], where: str = "--ignore"
) -> list[re.Pattern]:
    """Compile command-line ignore regexes with the same error as rule files."""
    return [_regex(p, where, "ignore") for p in patterns]
