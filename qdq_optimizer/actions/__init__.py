"""The action registry: named Python functions a YAML rule can call.

An action is a plain function ``fn(graph, node, params, ctx) -> list[Change]``. ``node`` is the
matched anchor node, or None for a global action (``match: {scope: graph}``). Every edit goes
through the QGraph mutation API. In dry-run (lint) an action must not mutate: it returns the
Changes it would make. Returning no Change means "nothing to do here"; the rule loop stops at the
fixpoint where no rule changes anything, so an action must never report a change it did not make.
What an action finds but cannot fix goes to ``ctx.cannot_fix`` (lint reports it, once).

Adding an action is one decorated function (``registry.register_action``) in a module of this
package (modules are imported automatically) plus a test.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..report import Change
from .registry import REGISTRY, Action, ActionContext, register_action

__all__ = [
    "Action",
    "ActionContext",
    "Change",
    "get_action",
    "load_actions",
    "register_action",
    "registered_actions",
]

_LOADED = False


def load_actions() -> None:
    """Import every module of this package once so their actions register themselves."""
    global _LOADED
    if _LOADED:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _LOADED = True


def registered_actions() -> dict[str, Action]:
    load_actions()
    return dict(REGISTRY)


def get_action(name: str) -> Action | None:
    load_actions()
    return REGISTRY.get(name)
