"""The house rules, checked on the source itself (docs/design.md, "Rooms"): arrows point down only, modules stay
under 400 lines and functions under 80. Each rule has a near miss that must still pass."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENGINE = ("runtime", "grammars", "convert")
PROGRAMS = ("serve", "eval", "agent")
PACKAGES = (*ENGINE, *PROGRAMS, "toolace")
# What the engine may not import: the programs built on it, the public API and the CLI.
FORBIDDEN_FOR_ENGINE = tuple(f"toolace.{p}" for p in PROGRAMS) + ("toolace.api", "toolace.cli", "toolace.edge")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules(folders: tuple[str, ...]) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py") if "__pycache__" not in p.parts)


def _absolute(module: Path, node: ast.ImportFrom) -> str:
    """The dotted name an import refers to, relative imports resolved against the module's toolace package."""
    if node.level == 0:
        return node.module or ""
    rel = module.relative_to(REPO).with_suffix("").parts
    package = ["toolace", *rel[:-1]] if rel[0] != "toolace" else list(rel[:-1])
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(module: Path, source: str | None = None) -> set[str]:
    tree = ast.parse(source if source is not None else module.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_FOR_ENGINE))


@pytest.mark.parametrize(("source", "bad"), [
    ("from toolace.api import ToolACE", ["toolace.api", "toolace.api.ToolACE"]),
    ("import toolace.serve.server", ["toolace.serve.server"]),
    ("from toolace import cli", ["toolace.cli"]),
    ("from ..agent import loop", ["toolace.agent", "toolace.agent.loop"]),
    ("def f():\n    from toolace.eval.bfcl import CATEGORIES", ["toolace.eval.bfcl", "toolace.eval.bfcl.CATEGORIES"]),
    # near misses that must pass: the shared base modules, and names that only look alike
    ("from toolace.errors import InputError", []),
    ("from toolace.limits import MAX_WS", []),
    ("from ..grammars.schema import Tool", []),
    ("import toolace.apis_are_not_the_api", []),
])
def test_import_rule_table(source: str, bad: list[str]) -> None:
    assert forbidden(imported_names(REPO / "runtime" / "example.py", source)) == bad


@pytest.mark.parametrize("module", _modules(ENGINE), ids=lambda p: str(p.relative_to(REPO)))
def test_engine_never_imports_programs_or_the_api(module: Path) -> None:
    assert forbidden(imported_names(module)) == []


def _too_long_functions(tree: ast.AST) -> list[tuple[str, int]]:
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno is not None
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


def test_function_rule_near_miss() -> None:
    at_limit = "def f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1)
    assert _too_long_functions(ast.parse(at_limit)) == []
    assert _too_long_functions(ast.parse(at_limit + "    x = 2\n")) == [("f", MAX_FUNCTION_LINES + 1)]


@pytest.mark.parametrize("module", _modules((*PACKAGES, "tests", "bench")), ids=lambda p: str(p.relative_to(REPO)))
def test_module_and_function_sizes(module: Path) -> None:
    text = module.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{module.name}: {text.count(chr(10))} lines"
    assert _too_long_functions(ast.parse(text)) == []


# --- import cycles, lazy imports included ----------------------------------------------------------------------------
def module_name(module: Path) -> str:
    """The dotted name a source file is imported as (pyproject maps runtime/ to toolace.runtime, and so on)."""
    parts = list(module.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "toolace" else ["toolace", *parts])


def import_graph(sources: dict[str, tuple[Path, str]]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, from every import statement wherever it stands: at the top, inside
    a function (a lazy import), under `if TYPE_CHECKING:`. `from pkg import name` is an edge to `pkg.name` when that
    is a module, else to `pkg`."""
    graph: dict[str, set[str]] = {}
    for name, (path, source) in sources.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(path, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in sources and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted: every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


@pytest.mark.parametrize(("files", "expected"), [
    ({"toolace/a.py": "import toolace.b", "toolace/b.py": "def f():\n    from toolace import a"},
     [["toolace.a", "toolace.b"]]),  # a lazy import closing the loop is still a cycle
    ({"toolace/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toolace.b import B",
      "toolace/b.py": "from toolace.a import A"}, [["toolace.a", "toolace.b"]]),
    ({"runtime/x.py": "from .y import Y", "runtime/y.py": "from ..convert.z import Z",
      "convert/z.py": "from toolace.runtime import x"},
     [["toolace.convert.z", "toolace.runtime.x", "toolace.runtime.y"]]),
    # near misses: a chain, and a module importing a name its package re-exports
    ({"toolace/a.py": "import toolace.b", "toolace/b.py": "import toolace.c", "toolace/c.py": "import json"}, []),
    ({"agent/__init__.py": "from .loop import run", "agent/loop.py": "from toolace.errors import E",
      "toolace/errors.py": ""}, []),
])
def test_cycle_finder_table(files: dict[str, str], expected: list[list[str]]) -> None:
    sources = {module_name(REPO / f): (REPO / f, text) for f, text in files.items()}
    assert cycles(import_graph(sources)) == expected


def test_no_import_cycles() -> None:
    sources = {module_name(p): (p, p.read_text()) for p in _modules(PACKAGES)}
    assert cycles(import_graph(sources)) == []
