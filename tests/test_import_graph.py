"""The import graph of qdq_optimizer/ and trainer/ has no cycle, lazy imports included.

Every module is parsed with ``ast`` (nothing is imported) and every import statement counts,
wherever it is: at module level, inside functions (lazy imports), under ``TYPE_CHECKING``, plus
``importlib.import_module("literal")`` calls. How an import becomes an edge:

- ``import a.b.c`` -> ``a.b.c`` (or its longest known prefix);
- ``from pkg import name`` -> ``pkg.name`` when that is a module (a submodule import), else ``pkg``
  (a name re-exported by ``pkg/__init__.py``, which is then an edge to the package itself);
- a package's ``__init__`` is a module like any other: its re-exports are its own edges;
- a package that discovers its modules (``pkgutil.iter_modules(__path__)``, the action registry)
  imports every one of them: an edge to each.

Importing ``pkg.sub`` also runs ``pkg/__init__`` first, but that is not counted as an edge from the
importer: the importer depends on ``sub``, not on what the package chooses to re-export (counting it
would make every package whose ``__init__`` re-exports a submodule look circular).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qdq_optimizer", "trainer")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(current: str, is_package: bool, level: int, module: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _known(name: str, modules: set[str]) -> str | None:
    """``name`` or its longest prefix that is one of ``modules``."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path, packages: tuple[str, ...]) -> nx.DiGraph:
    """Modules of ``packages`` under ``root`` and their imports of each other."""
    files = {
        module_name(p, root): p
        for pkg in packages
        for p in sorted((root / pkg).rglob("*.py"))
        if "__pycache__" not in p.parts
    }
    modules = set(files)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if is_package and _discovers_modules(node):
                targets = [m for m in modules if m.rpartition(".")[0] == name]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (
                    _resolve_relative(name, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                targets = [node.args[0].value]
            for target in targets:
                known = _known(target, modules)
                if known is not None and known != name:
                    graph.add_edge(name, known)
    return graph


def _discovers_modules(node: ast.AST) -> bool:
    """``pkgutil.iter_modules(__path__)``: a package that imports all of its modules."""
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "iter_modules"
        and any(isinstance(a, ast.Name) and a.id == "__path__" for a in node.args)
    )


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return import_graph(ROOT, PACKAGES)


def test_no_import_cycle_lazy_imports_included(graph: nx.DiGraph) -> None:
    cycles = sorted(sorted(c) for c in nx.simple_cycles(graph))
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_lazy_and_package_imports(graph: nx.DiGraph) -> None:
    """The parse is not vacuous: function-level imports and re-exports are edges."""
    assert graph.number_of_nodes() > 60
    assert graph.has_edge("qdq_optimizer.api", "qdq_optimizer.validate")  # inside optimize()
    assert graph.has_edge("qdq_optimizer", "qdq_optimizer.api")  # the package's lazy __getattr__
    assert graph.has_edge(
        "qdq_optimizer.engines.layer_report", "qdq_optimizer.engines.tensorrt_api"
    )
    assert graph.has_edge("qdq_optimizer.commands.inspect", "qdq_optimizer.engines")  # re-exports
    # the action registry discovers its modules
    assert graph.has_edge("qdq_optimizer.actions", "qdq_optimizer.actions.unify_scales")


def test_rules_run_no_model(graph: nx.DiGraph) -> None:
    """Rule actions are graph rewrites: nothing they import reaches ONNX Runtime or calibration."""
    actions = [m for m in graph if m.startswith("qdq_optimizer.actions")]
    assert "qdq_optimizer.actions.unify_scales" in actions
    forbidden = {"qdq_optimizer.runtime", "qdq_optimizer.calibration", "qdq_optimizer.verify"}
    for m in actions:
        assert not (nx.descendants(graph, m) & forbidden), m


def test_a_lazy_cycle_is_found(tmp_path: Path) -> None:
    """A cycle closed only by a function-level import and a ``from pkg import sub`` is caught."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n    return g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    cycles = list(nx.simple_cycles(import_graph(tmp_path, ("pkg",))))
    assert sorted(cycles[0]) == ["pkg.a", "pkg.b", "pkg.c"] and len(cycles) == 1


def test_a_cycle_through_module_discovery_is_found(tmp_path: Path) -> None:
    """A plugin package whose plugins import the package back (a registry in ``__init__``)."""
    pkg = tmp_path / "plug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import pkgutil\nREG = {}\ndef load():\n    return list(pkgutil.iter_modules(__path__))\n"
    )
    (pkg / "one.py").write_text("from . import REG\n")
    cycles = list(nx.simple_cycles(import_graph(tmp_path, ("plug",))))
    assert [sorted(c) for c in cycles] == [["plug", "plug.one"]]
