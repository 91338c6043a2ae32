"""The package's import graph: no cycles, and no module reaching into another's private names.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` in a module, at module level and inside functions (a lazy import still
ties the two modules together), except those under ``if TYPE_CHECKING:`` (annotations only,
never run). ``from .pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg``. Importing a submodule also runs its package's ``__init__``; that implied edge is not
counted (a package may re-export its submodules, and they import their siblings directly).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "hfconv"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Edges (importer, imported) that close a cycle today in files being restructured elsewhere.
# Each entry says where and why; remove it when the cycle is gone (the stale-entry test says so).
# A NEW cycle, not in this list, fails the test.
ALLOWED_CYCLE_EDGES: dict[tuple[str, str], str] = {
}

# Imports of another module's private name that remain today, in files being restructured
# elsewhere: (importer, imported module, name) -> why it is still there. A new one fails.
ALLOWED_PRIVATE_IMPORTS: dict[tuple[str, str, str], str] = {
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (``if TYPE_CHECKING:`` bodies left out, their ``else`` kept)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _edges() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """module -> the package modules it imports; and every (importer, module, private name) import."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    private: list[tuple[str, str, str]] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES:
                        graph[module].add(alias.name)
                continue
            base = _base(module, node)
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in MODULES:  # a submodule
                    graph[module].add(target)
                    continue
                if base in MODULES and base != module:  # findings.py's __main__ block imports itself: no cycle
                    graph[module].add(base)
                if alias.name.startswith("_") and not alias.name.startswith("__") and base != module:
                    private.append((module, base, alias.name))
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself),
    by Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def _without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if (m, t) not in ALLOWED_CYCLE_EDGES} for m, targets in graph.items()}


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = sorted(f"{m} -> {t}" for m in component for t in graph[m] if t in members)
    return "; ".join(edges)


def test_the_graph_is_read() -> None:
    """A sanity check of the reader itself: known edges are seen, TYPE_CHECKING ones are not."""
    graph, _ = _edges()
    assert "hfconv.render.text" in graph["hfconv.render"]  # from .text import ...
    assert "hfconv.findings" in graph["hfconv.render.text"]  # from ..findings import ...
    assert "hfconv.render.html" in graph["hfconv.render"]  # a lazy import inside render_html()
    assert "hfconv.conversion" not in graph["hfconv.render.html"]  # only under TYPE_CHECKING


def test_no_import_cycle() -> None:
    graph, _ = _edges()
    cycles = _cycles(_without_allowed(graph))
    assert not cycles, "import cycles (module level or inside functions): " + " | ".join(
        _describe(c, graph) for c in cycles)


def test_allowed_cycle_edges_are_still_needed() -> None:
    """An allow-list entry whose edge is gone, or no longer closes a cycle, must be removed."""
    graph, _ = _edges()
    stale = []
    for (importer, imported), why in ALLOWED_CYCLE_EDGES.items():
        if imported not in graph.get(importer, ()):
            stale.append(f"{importer} -> {imported} (no such import any more; {why})")
            continue
        trial = _without_allowed(graph)
        trial[importer] = trial[importer] | {imported}
        if not any(importer in c and imported in c for c in _cycles(trial)):
            stale.append(f"{importer} -> {imported} (closes no cycle any more; {why})")
    assert not stale, "remove from ALLOWED_CYCLE_EDGES: " + "; ".join(stale)


def test_no_private_name_imported_from_another_module() -> None:
    _, private = _edges()
    new = [f"{m}: from {b} import {n}" for m, b, n in private if (m, b, n) not in ALLOWED_PRIVATE_IMPORTS]
    assert not new, "a module imports another module's private name (make it public, or keep the job " \
                    "in one module): " + "; ".join(new)


def test_allowed_private_imports_are_still_there() -> None:
    _, private = _edges()
    stale = [f"{key}: {why}" for key, why in ALLOWED_PRIVATE_IMPORTS.items() if key not in set(private)]
    assert not stale, "remove from ALLOWED_PRIVATE_IMPORTS: " + "; ".join(stale)


def test_render_depends_only_on_results_findings_and_units() -> None:
    """The render package never imports an operation (convert, load-test, inspect, validate) or the CLI."""
    graph, _ = _edges()
    # weight_map: the shards and tensors a result carries for its pictures (a leaf data module).
    allowed = {"hfconv", "hfconv.findings", "hfconv.report", "hfconv.units", "hfconv.weight_map"}
    reached = {t for m, targets in graph.items() if m == "hfconv.render" or m.startswith("hfconv.render.")
               for t in targets if not t.startswith("hfconv.render")}
    assert reached <= allowed, sorted(reached - allowed)


def test_leaf_modules_import_nothing_from_hfconv() -> None:
    graph, _ = _edges()
    for leaf in ("hfconv.units", "hfconv.errors"):
        assert graph[leaf] == set(), leaf


def test_render_keeps_every_name_its_importers_use() -> None:
    """``hfconv.render`` is a package now; every name imported from the old ``render.py`` still is."""
    import hfconv.render as render

    for name in ("RENDERERS", "SARIF_SCHEMA", "FindingGroup", "compress_numbers", "dumps_json", "escape_text",
                 "finding_lines", "group_findings", "human_bytes", "human_count", "json_safe", "package_version",
                 "render_github", "render_html", "render_json", "render_sarif", "render_text"):
        assert hasattr(render, name), name
    assert sorted(render.RENDERERS) == ["github", "html", "json", "sarif", "text"]


def test_importing_the_cli_and_renderers_stays_cheap() -> None:
    """``hfconv validate`` pays for neither torch nor jinja2 (a page imports jinja2 when it is made)."""
    import subprocess
    import sys

    program = ("import sys, hfconv.cli, hfconv.render, hfconv.cli._common, hfconv.units\n"
               "print(sorted(m for m in ('torch', 'jinja2', 'hfconv.render.html', 'hfconv.conversion', "
               "'hfconv.load') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_py_typed_is_shipped() -> None:
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    assert (ROOT / "py.typed").is_file()
    config = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["hfconv"]
    assert "line-length" in config["tool"]["ruff"]
