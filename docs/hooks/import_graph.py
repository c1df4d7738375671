"""The xtf package's import graph, read from its source (no module is imported): every import of an xtf module by an
xtf module, including imports inside functions, and the layers that graph falls into. Two users:
  - tests/test_architecture.py fails on an import circle (`find_cycle`);
  - MkDocs (this file is a hook in mkdocs.yml) draws the layers into docs/architecture.md where it says
    <!-- import-layers -->, so the page shows the tree as it is at build time; a circle fails the build.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "xtf"
MARKER = "<!-- import-layers -->"


def module_files() -> dict[str, Path]:
    """xtf module name → its file (a package is named by its folder: xtf.tasks → xtf/tasks/__init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, name: str, path: Path, modules: dict) -> list[str]:
    """The xtf modules an import statement of module `name` loads: `from xtf import x` → xtf.x when x is a module
    (else xtf itself), `from xtf.a import b` → xtf.a.b or xtf.a, relative imports resolved against the package."""
    def nearest(dotted: str) -> str | None:  # the module itself, or the package that holds the imported name
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    if isinstance(node, ast.Import):
        found = [nearest(alias.name) for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        found = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else nearest(base)
                 for alias in node.names]
    return sorted({f for f in found if f and f.split(".")[0] == "xtf" and f != name})


def imports() -> list[tuple[str, str, int, bool]]:
    """Every import of an xtf module by an xtf module: (importer, imported, line, inside a function?), imports under
    `if TYPE_CHECKING:` left out (never run)."""
    modules = module_files()
    out = []

    def visit(node, name: str, path: Path, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                visit(ast.Module(body=child.orelse, type_ignores=[]), name, path, in_function)  # its `else:` runs
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend((name, t, child.lineno, in_function) for t in _targets(child, name, path, modules))
            visit(child, name, path,
                  in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    for name, path in modules.items():
        visit(ast.parse(path.read_text(), filename=str(path)), name, path, False)
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle [a, b, ..., a] of the graph, or None (depth-first search; a grey node met again closes one)."""
    state: dict[str, str] = {}  # grey: on the current path; black: finished
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = "grey"
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "grey":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = "black"
        return None

    for start in sorted(edges):
        if start not in state and (found := dfs(start)):
            return found
    return None


def edges() -> dict[str, set[str]]:
    """importer → the xtf modules it imports (at the top or inside a function)."""
    out: dict[str, set[str]] = {name: set() for name in module_files()}
    for a, b, _, _ in imports():
        out[a].add(b)
    return out


def layers(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules by layer: layer 0 imports no xtf module, layer k only modules of layers < k (one of k - 1).
    Raises ValueError naming a circle, where no layering exists."""
    cycle = find_cycle(graph)
    if cycle:
        raise ValueError(f"import circle: {' -> '.join(cycle)}")
    level: dict[str, int] = {}

    def depth(node: str) -> int:
        if node not in level:
            level[node] = 1 + max((depth(d) for d in graph.get(node, ())), default=-1)
        return level[node]

    for node in graph:
        depth(node)
    return [sorted(n for n, k in level.items() if k == i) for i in range(max(level.values(), default=-1) + 1)]


def layers_markdown() -> str:
    """The layers as a Markdown table, the bottom first."""
    rows = ["| layer | modules (each imports only modules of lower layers) |", "|---|---|"]
    rows += [f"| {i} | {', '.join(f'`{m}`' for m in mods)} |" for i, mods in enumerate(layers(edges()))]
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    return markdown.replace(MARKER, layers_markdown()) if MARKER in markdown else markdown
