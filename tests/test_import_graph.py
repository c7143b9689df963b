"""The package's imports point one way: no cycle between its modules, no private name taken from another module, and
nothing imported from the top-level `training` package (the trainer depends on the library, never the reverse).

The graph is read from the source with `ast`, so imports inside functions (deferred imports) count as much as those at
module level; `if TYPE_CHECKING:` blocks are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "ddpm_plugin"


def _module_name(path: Path, package_dir: Path) -> str:
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom of a module, at any depth, except under `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            todo.append(child)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an `ImportFrom` reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def read_imports(package_dir: Path) -> tuple[set[str], list[tuple[str, str, str | None]]]:
    """
    The package's modules and its imports, as `(importer, imported module, imported name or None)`; a `from pkg import
    name` where `pkg.name` is a module counts as an import of that module.
    """
    # only importable modules: a folder whose name is not an identifier (a saved model folder) is no package part
    files = {
        _module_name(p, package_dir): p
        for p in sorted(package_dir.rglob("*.py"))
        if all(part.isidentifier() for part in p.relative_to(package_dir).parent.parts)
    }
    modules = set(files)
    imports = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _import_nodes(tree):
            if isinstance(node, ast.Import):
                imports.extend((module, alias.name, None) for alias in node.names)
                continue
            source = _resolve(module, is_package, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    imports.append((module, submodule, None))
                else:
                    imports.append((module, source, alias.name))
    return modules, imports


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports (a package's `__init__` counts as the module named by the package;
    `importlib.import_module` calls with computed names, as in the root's lazy exports, are not seen)."""
    modules, imports = read_imports(package_dir)
    graph = {m: set() for m in modules}
    for importer, imported, _ in imports:
        if imported in modules and imported != importer:
            graph[importer].add(imported)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


# ---------------------------------------------------------------------------------------------------- the checker
def test_checker_finds_cycles_and_private_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import public\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.sub import c\n\npublic = 1\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\nfrom ..b import _helper\nfrom .. import d\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}  # a function-level import counts
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.b", "pkg.d"}
    assert graph["pkg.d"] == set()  # TYPE_CHECKING imports do not run
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    _, imports = read_imports(pkg)
    assert [(i, m, n) for i, m, n in imports if n and _is_private(n)] == [("pkg.sub.c", "pkg.b", "_helper")]


# ---------------------------------------------------------------------------------------------------- the package
def test_package_has_no_import_cycle():
    cycles = find_cycles(import_graph(PACKAGE_DIR))
    assert cycles == [], f"import cycles in ddpm_plugin: {cycles}"


def test_no_private_name_is_imported_from_another_module():
    modules, imports = read_imports(PACKAGE_DIR)
    bad = sorted(
        f"{importer} imports {name} from {imported}"
        for importer, imported, name in imports
        if name is not None and _is_private(name) and imported in modules and imported != importer
    )
    assert bad == [], "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("top_level", ["training", "app", "benchmarks", "tests"])
def test_library_does_not_import_its_users(top_level):
    _, imports = read_imports(PACKAGE_DIR)
    bad = sorted({f"{i} imports {m}" for i, m, _ in imports if m == top_level or m.startswith(top_level + ".")})
    assert bad == [], f"ddpm_plugin must not depend on {top_level}: {bad}"
