"""Apply a rule set to a fixpoint (``model_io.finalize`` turns the graph back into a checked model).

Deterministic: rules run in rule-set order, each over its anchor nodes in topological order
(ties keep file order), and generated names come from one counter. Each iteration costs
O(rules x nodes): candidates come from QGraph's op index and matching is local. The loop stops at
the first iteration in which no rule changes anything, or at ``max_iterations`` (reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .actions import ActionContext, get_action
from .errors import QdqoptError
from .gcutil import paused_gc
from .graph import QGraph
from .matcher import matches
from .report import Change, RuleResult
from .ruleset import Rule, RuleSet

DEFAULT_MAX_ITERATIONS = 20


@dataclass
class EngineRun:
    """The outcome of ``apply_rules``: per-rule results and how the loop ended."""

    results: list[RuleResult]
    iterations: int
    converged: bool
    warnings: list[str] = field(default_factory=list)


def apply_rules(
    graph: QGraph,
    ruleset: RuleSet,
    *,
    dry_run: bool = False,
    ignore: list | None = None,
    settings: dict[str, Any] | None = None,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> EngineRun:
    """Run every rule until nothing changes. In dry-run one pass reports would-be changes."""
    if max_iterations < 1:
        raise ValueError("max_iterations must be at least 1")
    graph.read_only = dry_run
    try:
        with paused_gc():
            return _apply_rules(graph, ruleset, dry_run, ignore, settings, max_iterations)
    finally:
        graph.read_only = False


def _apply_rules(graph, ruleset, dry_run, ignore, settings, max_iterations) -> EngineRun:
    patterns = list(ruleset.ignore if ignore is None else ignore)
    merged_settings = {**ruleset.settings, **(settings or {})}
    results = [RuleResult(rule_id=r.id, action=r.action, why=r.why) for r in ruleset.rules]
    iterations = 0
    converged = False
    focus: dict[int, object] | None = None  # None: visit every anchor; else only these nodes
    run_state: dict = {}  # shared by all rules of this run (ActionContext.run)
    warnings: list[str] = []
    while iterations < (1 if dry_run else max_iterations):
        iterations += 1
        changed = 0
        all_local = True
        # One topological snapshot per iteration: nodes that earlier rules create in this
        # iteration are visited in the next one (any change means there is a next one).
        if focus is None:
            order = graph.topo_nodes()
        else:  # no full re-sort: known nodes keep their (still valid) relative order
            order = sorted((n for n in focus.values() if graph.contains(n)), key=graph.position)
        by_op: dict[str, list] = {}
        for n in order:
            by_op.setdefault(n.op, []).append(n)
        graph.start_tracking()
        for rule, result in zip(ruleset.rules, results, strict=True):
            ctx = ActionContext(
                dry_run=dry_run,
                ignore=patterns,
                settings=merged_settings,
                rule_id=rule.id,
                run=run_state,
            )
            changes = _apply_rule(graph, rule, ctx, by_op)
            result.changes.extend(changes)
            result.notes.extend(n for n in ctx.notes if n not in result.notes)
            result.unfixable.extend(p for p in ctx.unfixable if p not in result.unfixable)
            warnings.extend(w for w in ctx.warnings if w not in warnings)
            changed += len(changes)
            if changes and (rule.match.scope == "graph" or not get_action(rule.action).local):
                all_local = False
        touched = graph.take_touched()
        if dry_run or changed == 0:
            converged = True
            break
        # After edits by local actions only, the next pass needs to look only near them.
        focus = _neighbourhood(touched) if all_local else None
    if not converged:
        warnings.append(
            f"rules did not reach a fixpoint within {max_iterations} iterations "
            "(raise --max-iterations, or two rules undo each other)"
        )
    return EngineRun(results, iterations, converged, warnings)


def _neighbourhood(nodes: list) -> dict[int, object]:
    """Ids of ``nodes``, their producers, consumers and siblings (other readers of their
    inputs): with the nodes QGraph records next to each edit, this covers every anchor within
    two hops of an edit, the reach a ``local`` action promises to stay in."""
    found: dict[int, object] = {}
    for n in nodes:
        found[id(n)] = n
        for t in n.inputs:
            for p in t.inputs:
                found[id(p)] = p
            for c in t.outputs:
                found[id(c)] = c
        for t in n.outputs:
            for c in t.outputs:
                found[id(c)] = c
    return found


def _apply_rule(
    graph: QGraph, rule: Rule, ctx: ActionContext, by_op: dict[str, list]
) -> list[Change]:
    action = get_action(rule.action)
    if action is None:  # the rule set loader already rejects this
        raise QdqoptError(f"rule '{rule.id}': unknown action '{rule.action}'")
    params = dict(rule.params)
    if rule.match.scope == "graph":
        return _call(action.fn, graph, None, params, ctx, rule)
    out: list[Change] = []
    ops = sorted(rule.match.ops or ())
    if len(ops) == 1:
        nodes = by_op.get(ops[0], [])
    else:
        nodes = sorted((n for op in ops for n in by_op.get(op, ())), key=graph.position)
    if action.reverse:
        nodes = nodes[::-1]
    contains, match, fn = graph.contains, rule.match, action.fn
    ignoring = bool(ctx.ignore) and action.skip_ignored
    for node in nodes:
        # An earlier edit in this pass may have removed or rewired the node.
        if not contains(node) or (ignoring and ctx.is_ignored(node)):
            continue
        if matches(graph, node, match):
            try:
                changes = fn(graph, node, params, ctx)
            except QdqoptError:
                raise
            except Exception as exc:
                raise RuntimeError(
                    f"rule '{rule.id}' ({rule.action}) failed on node '{node.name}': {exc}"
                ) from exc
            if changes:
                out.extend(changes)
    return out


def _call(fn, graph, node, params, ctx, rule: Rule) -> list[Change]:
    try:
        changes = fn(graph, node, params, ctx)
    except QdqoptError:
        raise
    except Exception as exc:
        where = f" on node '{node.name}'" if node is not None else ""
        raise RuntimeError(f"rule '{rule.id}' ({rule.action}) failed{where}: {exc}") from exc
    return list(changes or [])
