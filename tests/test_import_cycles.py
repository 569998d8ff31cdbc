"""No import cycles among modelspec's modules (modelspec/ and backends/, which installs as
modelspec.backends): every import counts, at module level or inside a function, except
those under `if TYPE_CHECKING:`, which never run. A cycle makes the import order matter
and hides which module owns what.

Run as a script to print the graph's cycles: python tests/test_import_cycles.py
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"modelspec": ROOT / "modelspec", "modelspec.backends": ROOT / "backends"}

def modules() -> dict[str, Path]:
    """Every module's dotted name and file."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """The import statements that run: all of them but those under `if TYPE_CHECKING:`."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules among `known` that module `name` imports. `from package import module` is
    an edge to the module; importing a submodule also runs its parents' __init__, which is
    not counted (a package's __init__ importing its own submodules would otherwise always be
    a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_both_packages():
    edges = graph()
    assert "modelspec.checker" in edges["modelspec.api"]
    assert "modelspec.backends.keras.lowering" in edges["modelspec.backends.keras.emit"]


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


if __name__ == "__main__":
    for component in cycles(graph()):
        print(" <-> ".join(sorted(component)))
