"""The folder layout tells the architecture: no site <-> coordinator imports, no circles."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "mmfl",
    "adaptation",
    "client",
    "data",
    "models",
    "protocols",
    "server",
    "simulation",
    "strategies",
]


def module_graph() -> dict[str, set[str]]:
    """Every ``mmfl.*`` module and the ``mmfl.*`` modules it imports (also inside functions)."""
    modules: dict[str, Path] = {}
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join(["mmfl"] + ([] if folder == "mmfl" else [folder]) + parts)] = path
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmfl"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges[name].add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules)
    return {m: {t for t in edges[m] if t in modules} for m in modules}


def package(module: str) -> str:
    """The top-level folder of a module; ``mmfl.cli`` (the command that mounts every
    package's commands) counts as its own."""
    if module == "mmfl.cli":
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in PACKAGES) else "mmfl"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return module_graph()


def test_site_and_coordinator_do_not_import_each_other(graph) -> None:
    crossing = [
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if {package(a), package(b)} == {"client", "server"}
    ]
    assert crossing == []
    assert len(graph) > 60 and any(package(b) == "protocols" for b in graph["mmfl.server.exchange"])


def test_no_module_and_no_package_circles(graph) -> None:
    assert cycles(graph) == []
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        packages[package(a)].update(package(b) for b in targets if package(b) != package(a))
    assert cycles(dict(packages)) == []
    assert "models" not in packages["data"] and "data" in packages["models"]


def test_the_checks_see_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
