"""What an action is and how it registers: ``register_action``, ``Action``, ``ActionContext``.

Action modules import these from here (not from the package), so the package can discover and
import every action module (``load_actions``) without an import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..graph import Node, QGraph, name_matches
from ..report import Change, Problem

__all__ = ["REGISTRY", "Action", "ActionContext", "Change", "register_action"]

ActionFn = Callable[[QGraph, "Node | None", dict, "ActionContext"], list[Change]]


@dataclass(frozen=True)
class Action:
    name: str
    fn: ActionFn
    params: dict[str, Any] | None  # allowed params and defaults; None = not checked
    doc: str
    local: bool = False  # see register_action
    skip_ignored: bool = True  # see register_action
    reverse: bool = False  # see register_action


REGISTRY: dict[str, Action] = {}  # name -> Action, filled as the action modules import


def register_action(
    name: str,
    *,
    params: dict[str, Any] | None = None,
    local: bool = False,
    skip_ignored: bool = True,
    reverse: bool = False,
) -> Callable[[ActionFn], ActionFn]:
    """Register ``fn`` under ``name``. ``params`` lists the allowed parameters with defaults:
    a rule that passes another key is rejected when the rule set loads.

    ``local=True`` promises that the action's decision for an anchor depends only on nodes
    within two hops of it (its producers, consumers and their other readers/producers) and
    that it edits only through the QGraph API. The rule loop then revisits, after an iteration
    whose changes all came from local actions, only the neighbourhood of those edits.

    ``skip_ignored=False``: the rule loop also calls the action on anchors on the ignore list; the
    action applies the list itself (e.g. it acts on ignored nodes, or the ignore test concerns
    another node than the anchor). ``reverse=True``: anchors are visited in reverse topological
    order (e.g. so a chain of removals goes in one pass)."""

    def deco(fn: ActionFn) -> ActionFn:
        if name in REGISTRY and REGISTRY[name].fn is not fn:
            raise ValueError(f"action '{name}' is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        REGISTRY[name] = Action(
            name, fn, params, doc[0] if doc else "", local, skip_ignored, reverse
        )
        return fn

    return deco


@dataclass
class ActionContext:
    """What an action may know beyond its node: mode, ignore list, settings, and a notebook."""

    dry_run: bool = False
    ignore: list[re.Pattern] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    rule_id: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # for the user: stderr and the report
    # Problems the rule found but cannot fix (lint and optimize's remaining problems report them
    # under the rule's id): a find without a fix.
    unfixable: list[Problem] = field(default_factory=list)
    # Scratch space for one rule's visit of its anchors in one iteration (a fresh context per
    # rule and iteration): an anchored action caches a whole-graph fact here, computed once.
    cache: dict[str, Any] = field(default_factory=dict)
    # State shared by every rule for one whole run (one dict per apply_rules call): facts a rule
    # leaves for a later one, e.g. the skip quantizers residual-add inserted this run.
    run: dict[str, Any] = field(default_factory=dict)

    def is_ignored(self, node: Node | str | None) -> bool:
        """True when a node (or name) matches an ignore regex: actions must leave it alone."""
        if node is None or not self.ignore:
            return False
        return name_matches(node if isinstance(node, str) else node.name, self.ignore)

    def note(self, text: str) -> None:
        """Record an observation for the report (not a change)."""
        self.notes.append(text)

    def any_ignored(self, nodes: Iterable[Node]) -> bool:
        """True when any of ``nodes`` is on the ignore list."""
        return any(self.is_ignored(n) for n in nodes)

    def cannot_fix(self, nodes: list[str], message: str) -> None:
        """Record a problem this rule finds but cannot fix; lint reports it under the rule id."""
        problem = Problem(self.rule_id, list(nodes), message)
        if problem not in self.unfixable:
            self.unfixable.append(problem)

    def warn(self, text: str) -> None:
        """Record something the user should act on (printed, and in the report's warnings)."""
        self.warnings.append(text)
