"""The import graph of ``qcbench``: no cycles, packages imported only from outside, planning
without pandas.

The graph is read from the sources (AST), so it covers imports inside functions too. A node is a
module; a package is its ``__init__``. ``import a.b`` and ``from a.b import c`` are edges to
``a.b``, or to ``a.b.c`` when ``c`` is a submodule; a package's ``import_submodules`` call is an
edge to each of its public modules (what it imports at run time). Parent packages that Python runs on the way
are not edges: a package's ``__init__`` imports its own submodules (registration, timm-style),
and a submodule reaches its siblings directly (``from qcbench.tables._base import ...``), never
through a package that contains it, which would be a cycle through that ``__init__``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "workflow" / "src"
PACKAGE = "qcbench"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, level: int, current: str) -> str:
    """The absolute name of a (possibly relative) ``from`` import in module ``current``."""
    if not level:
        return module
    base = current.split(".") if _is_package(current) else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _owner(name: str) -> str | None:
    """The qcbench module ``name`` is, or lies in (an attribute of a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str) -> set[str]:
    """The qcbench modules module ``name`` imports, at top level or inside functions."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_submodules":
            targets = [m for m in MODULES if m.rpartition(".")[0] == name and not m.rpartition(".")[2].startswith("_")]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, name)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out |= {m for t in targets if t.split(".")[0] == PACKAGE and (m := _owner(t))}
    out.discard(name)
    return out


GRAPH = {m: imports(m) for m in MODULES}


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(comps)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component: the shortest path from its first module back."""
    cycles = []
    for comp in _components(graph):
        start, members = comp[0], set(comp)
        paths, seen = {start: [start]}, {start}
        frontier = [start]
        while frontier and not any(start in graph[f] for f in frontier):
            nxt = []
            for f in frontier:
                for w in sorted(graph[f] & members - seen):
                    seen.add(w)
                    paths[w] = [*paths[f], w]
                    nxt.append(w)
            frontier = nxt
        last = next(f for f in frontier if start in graph[f])
        cycles.append([*paths[last], start])
    return cycles


def test_the_graph_sees_function_level_and_package_imports():
    """The reader itself: an import inside a function and ``from package import submodule``."""
    assert "qcbench.plan" in GRAPH["qcbench.config"]  # imported inside semantic_errors
    assert {"qcbench.tables.main", "qcbench.tables._base"} <= GRAPH["qcbench.tables"]  # import_submodules
    assert "qcbench.defenses.anp" in GRAPH["qcbench.defenses"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_a_package_that_contains_it():
    """``qcbench.x.y`` imports ``qcbench.x.z`` (or ``_base``, ``base``) directly, never
    ``qcbench.x`` itself: that package's ``__init__`` imports ``y`` for registration."""
    bad = [
        f"{m} imports its own package {p}"
        for m, deps in sorted(GRAPH.items())
        for p in sorted(deps)
        if _is_package(p) and m.startswith(p + ".")
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Every cycle is named, with the other modules caught in it."""
    lines = []
    for cycle, comp in zip(_cycles(GRAPH), _components(GRAPH), strict=True):
        others = sorted(set(comp) - set(cycle))
        lines.append(" -> ".join(cycle) + (f" (also in the loop: {', '.join(others)})" if others else ""))
    assert not lines, "import cycles:\n" + "\n".join(lines)


def test_table_families_import_only_the_base_modules():
    """No table family imports another or the package: each reaches ``_base`` (and the ablation
    tables' ``_ablation``) only, so a family can be added or removed on its own."""
    families = [m for m in MODULES if m.startswith("qcbench.tables.") and not m.rpartition(".")[2].startswith("_")]
    assert families
    shared = {"qcbench.tables._base", "qcbench.tables._ablation"}
    for m in families:
        assert not {d for d in GRAPH[m] if d.startswith("qcbench.tables")} - shared, m
    assert not {d for d in GRAPH["qcbench.tables._base"] if d.startswith("qcbench.tables")}


@pytest.mark.parametrize("module", ["qcbench.plan", "qcbench.config"])
def test_planning_imports_neither_pandas_nor_the_tables(module):
    """The workflow plans cells (and checks the config) without loading pandas or any rendering
    code, in a fresh interpreter."""
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m == 'pandas' or m.startswith(('pandas.', 'qcbench.tables')))\n"
        "print(','.join(bad))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""
