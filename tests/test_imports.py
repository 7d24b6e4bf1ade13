"""The package's modules import one another without a cycle, and each package imports alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "margo_dist"
PACKAGES = ["config", "data", "graph", "model", "dist", "train", "tune", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The margo_dist modules ``path`` imports when it runs: at its top and inside functions,
    not in ``if TYPE_CHECKING:`` blocks (annotations only)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("margo_dist"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("margo_dist"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found & modules


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: runtime_imports(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path that returns to its start; [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = walk(start)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    assert "margo_dist.train.loop" in graph and "margo_dist.dist.launch" in graph["margo_dist.train.workers"]
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` with each module replaced by its package (``margo_dist.dist.step`` -> ``dist``; a
    top-level module, ``margo_dist.config``, is its own), edges inside a package dropped."""
    def package(module: str) -> str:
        return module.split(".")[1] if "." in module else module

    out: dict[str, set[str]] = {}
    for module, imported in graph.items():
        out.setdefault(package(module), set()).update(package(m) for m in imported)
    return {name: deps - {name} for name, deps in out.items()}


def test_the_packages_are_layers_without_a_cycle() -> None:
    """model below dist below train: the model reads its placement from ``model/placement.py`` and
    the Ray launcher is given the worker's loop by ``train/workers.py``."""
    packages = package_graph(import_graph())
    assert "dist" in packages["train"] and "model" in packages["dist"]  # the edges are seen
    assert "dist" not in packages["model"] and "train" not in packages["dist"]
    assert find_cycle(packages) == [], " -> ".join(find_cycle(packages))


def test_each_package_imports_alone() -> None:
    procs = {name: subprocess.Popen([sys.executable, "-c", f"import margo_dist.{name}"], stderr=subprocess.PIPE,
                                    text=True, cwd=ROOT.parent) for name in PACKAGES}
    failed = {name: p.communicate(timeout=120)[1].strip().splitlines()[-1:] for name, p in procs.items()}
    assert {name: err for name, err in failed.items() if procs[name].returncode != 0} == {}
