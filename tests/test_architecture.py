"""The shape of the package, read from its source (no module is imported): no import circle among the xtf modules,
not even through an import inside a function; no xtf import hidden inside a function (unless listed below, with
why); no module longer than 400 lines (unless listed below while it is being split).

    .venv/bin/python -m pytest -q tests/test_architecture.py
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xtf"
MAX_LINES = 400

# (importer, imported) → why the import sits inside a function. Only for what loads heavy dependencies that a caller
# must not wait for; every other xtf import is at the top of its module.
FUNCTION_IMPORTS_ALLOWED = {
    ("xtf.cli", "xtf.pipeline"): "torch and transformers: loaded only once the config is valid, so a typo is "
                                 "reported in seconds",
    ("xtf.cli", "xtf.validate"): "the method registry (xtf.methods: the online rules) imports torch: `xtf --help` "
                                 "and a bad override (xtf.overrides) are answered without it",
    ("xtf.cli", "xtf.unread"): "imports the method registry (xtf.methods), which imports torch; as xtf.validate",
    ("xtf.methods.da", "xtf.augment"): "generation loads models (transformers): the registry, which validation "
                                       "imports, must not; DA's paraphrasing is imported when DA runs",
}

# Modules over MAX_LINES that are being split: remove a name once its module is back under the limit (the test says
# when). Add none.
KNOWN_LONG_MODULES: set[str] = set()


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


def test_the_graph_reader_resolves_the_import_forms():
    edges = {(a, b) for a, b, _, _ in imports()}
    assert ("xtf.results", "xtf") in edges                      # from xtf import __version__ (the package)
    assert ("xtf.data", "xtf.tasks") in edges                   # from xtf import tasks (a package)
    assert ("xtf.data", "xtf.tasks.common") in edges            # from xtf.tasks.common import TaskData
    assert ("xtf.tasks.pubmedqa", "xtf.tasks.medqa") in edges   # from xtf.tasks import medqa (a module)
    assert ("xtf.cli", "xtf.pipeline") in {(a, b) for a, b, _, inside in imports() if inside}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_no_import_circle_among_the_xtf_modules():
    found = imports()
    edges: dict[str, set[str]] = {}
    for a, b, _, _ in found:
        edges.setdefault(a, set()).add(b)
    cycle = find_cycle(edges)
    if cycle:
        where = {(a, b): f"{module_files()[a].relative_to(PACKAGE.parent)}:{line}" for a, b, line, _ in found}
        steps = "\n".join(f"  {a} -> {b}   ({where[a, b]})" for a, b in zip(cycle, cycle[1:]))
        raise AssertionError(f"import circle: {' -> '.join(cycle)}\n{steps}\nmove the shared piece into a module "
                             f"below both (as xtf.errors, xtf.ranks, xtf.hub), rather than hiding the import in a "
                             f"function")


def test_xtf_modules_are_imported_at_the_top():
    inside = sorted({(a, line, b) for a, b, line, in_function in imports() if in_function})
    hidden = [f"  {module_files()[a].relative_to(PACKAGE.parent)}:{line} imports {b}"
              for a, line, b in inside if (a, b) not in FUNCTION_IMPORTS_ALLOWED]
    assert not hidden, ("xtf modules imported inside a function (import them at the top; an import circle that this "
                        "would close is cut by moving the shared piece down):\n" + "\n".join(hidden))
    stale = sorted(set(FUNCTION_IMPORTS_ALLOWED) - {(a, b) for a, _, b in inside})
    assert not stale, f"FUNCTION_IMPORTS_ALLOWED lists imports that are no longer inside a function: {stale}"


def test_modules_stay_under_the_line_limit():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in module_files().values()}
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    new = {name: n for name, n in long.items() if name not in KNOWN_LONG_MODULES}
    assert not new, f"modules over {MAX_LINES} lines (split them into small explicit modules): {new}"
    shrunk = sorted(KNOWN_LONG_MODULES - set(long))
    assert not shrunk, f"{shrunk} are now at most {MAX_LINES} lines: remove them from KNOWN_LONG_MODULES"


# ------------------------------------------------------------------------------------------ methods by name
# A method is one module of xtf/methods and one registry entry: the rest of the package asks the registry what a
# method does (xtf.methods.get(name).kind, .needs, .trains_own_model, ...) and never names one. The method names
# are conf/method's files (each selects the registered method of its name).
METHOD_NAMES = frozenset(p.stem for p in (PACKAGE.parent / "conf" / "method").glob("*.yaml"))


def _named_methods(node: ast.AST) -> list[str]:
    """The method names a comparison operand spells out: a string constant, or a tuple / list / set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in METHOD_NAMES else []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [n for e in node.elts for n in _named_methods(e)]
    return []


def _about_a_method(node: ast.AST) -> bool:
    """An operand that holds a method's name: `<x>.name` or anything spelled with "method" (cfg.method.name,
    record["method"], method.match)."""
    return (isinstance(node, ast.Attribute) and node.attr == "name") or "method" in ast.unparse(node)


def method_name_uses(source: str) -> list[tuple[int, str]]:
    """(line, code) of each comparison of a method's name with a method name spelled out (`m.name == "df"`,
    `method.name in ("xtf", "xtf_official")`) and each dict literal keyed by method names only or by two or more."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_named_methods(o) for o in operands) and any(_about_a_method(o) for o in operands
                                                                  if not _named_methods(o)):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Dict):
            keys = [n for k in node.keys if k is not None for n in _named_methods(k)]
            if len(keys) >= 2 or (keys and len(keys) == len(node.keys)):  # {"da": paraphrase} too
                found.append((node.lineno, f"a dict keyed by methods {keys}"))
    return sorted(found)


def test_the_method_name_check_finds_what_it_should():
    assert METHOD_NAMES >= {"xtf", "tc", "df", "none", "random", "da"}
    flagged = method_name_uses('if m.name == "df": pass\n'
                               'if cfg.method.name in ("xtf", "xtf_official"): pass\n'
                               'x = {"tc": "tc", "slm": "tc", "df": "nll"}.get(method.name)\n'
                               'if record["method"] != "none": pass\n'
                               'AUGMENTERS = {"da": paraphrase}\n')
    assert sorted(line for line, _ in flagged) == [1, 2, 3, 4, 5]
    assert not method_name_uses('if cfg.dist.strategy == "none": pass\n'          # a strategy, not a method
                                'NOISE_SIDE = {"ri": "low", "tc": "low"}\n'       # scores, one named like TC
                                'if model_cfg.tiny not in ("random", "pretrained"): pass\n'
                                'if method.kind == "online": pass\n')


def test_no_module_outside_xtf_methods_names_a_method():
    found = [f"  {path.relative_to(PACKAGE.parent)}:{line}: {code}"
             for name, path in module_files().items() if not name.startswith("xtf.methods")
             for line, code in method_name_uses(path.read_text())]
    assert not found, ("methods named outside xtf/methods (ask the registry, xtf.methods, what the method does; "
                       "give its registry entry the field it lacks):\n" + "\n".join(found))
