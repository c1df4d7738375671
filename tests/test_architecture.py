"""The shape of the package, read from its source (no module is imported): no import circle among the xtf modules,
not even through an import inside a function or a method's "module:attribute" path; no xtf import hidden inside a
function (unless listed below, with why); no module longer than 400 lines (unless listed below while it is being
split), no function longer than 80. And, in a fresh interpreter, config validation loads neither torch nor
transformers (the method registry included: its torch code is named by paths, which all resolve).

    .venv/bin/python -m pytest -q tests/test_architecture.py
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "hooks"))
import import_graph  # noqa: E402 - the same reader draws the layers in docs/architecture.md
from import_graph import PACKAGE, find_cycle, imports, module_files  # noqa: E402

MAX_LINES = 400
MAX_FUNCTION_LINES = 80

# (importer, imported) → why the import sits inside a function. Only for what loads heavy dependencies that a caller
# must not wait for; every other xtf import is at the top of its module.
FUNCTION_IMPORTS_ALLOWED = {
    ("xtf.cli", "xtf.pipeline"): "torch and transformers: loaded only once the config is valid, so a typo is "
                                 "reported in seconds",
}

# Modules over MAX_LINES that are being split: remove a name once its module is back under the limit (the test says
# when). Add none.
KNOWN_LONG_MODULES: set[str] = set()


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


def test_the_layers_drawn_in_the_docs_hold_every_module_below_its_importers():
    """docs/architecture.md's layer table (docs/hooks/import_graph.py): every module once, each import pointing to a
    lower layer; a circle has no layering and is named."""
    graph = import_graph.edges()
    drawn = import_graph.layers(graph)
    level = {m: i for i, mods in enumerate(drawn) for m in mods}
    assert sorted(level) == sorted(module_files()) and sum(map(len, drawn)) == len(level)
    assert all(level[b] < level[a] for a, bs in graph.items() for b in bs)
    assert "xtf.errors" in drawn[0] and level["xtf.cli"] > level["xtf.pipeline"] > level["xtf.train"]
    try:
        import_graph.layers({"a": {"b"}, "b": {"a"}})
    except ValueError as e:
        assert "a -> b -> a" in str(e)
    else:
        raise AssertionError("a circle was given layers")
    assert import_graph.MARKER in (PACKAGE.parent / "docs" / "architecture.md").read_text()


def test_xtf_modules_are_imported_at_the_top():
    inside = sorted({(a, line, b) for a, b, line, in_function in imports() if in_function})
    hidden = [f"  {module_files()[a].relative_to(PACKAGE.parent)}:{line} imports {b}"
              for a, line, b in inside if (a, b) not in FUNCTION_IMPORTS_ALLOWED]
    assert not hidden, ("xtf modules imported inside a function (import them at the top; an import circle that this "
                        "would close is cut by moving the shared piece down):\n" + "\n".join(hidden))
    stale = sorted(set(FUNCTION_IMPORTS_ALLOWED) - {(a, b) for a, _, b in inside})
    assert not stale, f"FUNCTION_IMPORTS_ALLOWED lists imports that are no longer inside a function: {stale}"


def test_functions_stay_under_the_line_limit():
    """A function a reader can hold: at most MAX_FUNCTION_LINES lines (decorators and docstring included)."""
    long = []
    for path in module_files().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - min([node.lineno, *(d.lineno for d in node.decorator_list)]) + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"  {path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(long)


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


# ------------------------------------------------------------------------------------------ validation, torch-free
def test_config_validation_loads_neither_torch_nor_transformers():
    """A bad value is reported in a second, not after torch has loaded (~30-60 s on a busy machine): the schema, the
    checks and the method registry with every method module import no torch (issue 28)."""
    code = ("import sys, xtf.config, xtf.validate, xtf.unread, xtf.methods, xtf.overrides; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"config validation imports {done.stdout.strip()}"


def _resolvers() -> set[str]:
    """The xtf modules that call `methods.resolve` / `registry.resolve` (import a method's path)."""
    found = set()
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "resolve"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("methods", "registry")):
                found.add(name)
    return found


def test_every_method_path_resolves_and_closes_no_import_circle():
    """What a method names by a "module:attribute" path (torch code: an online rule, its signal providers, DA's
    generation) is a callable, and importing it where it is resolved closes no import circle: the graph plus an
    edge from every resolving module to every named module has none."""
    from xtf import methods

    named = {}
    for method in methods.METHODS.values():
        for ref in methods.registry.references(method):
            assert callable(methods.resolve(ref)), f"method {method.name}: {ref} is not a callable"
            named[ref.partition(":")[0]] = method.name
    assert {"xtf.methods.sstoken_step", "xtf.augment"} <= set(named)
    resolvers = _resolvers()
    assert resolvers >= {"xtf.online", "xtf.pipeline"}
    edges: dict[str, set[str]] = {}
    for a, b, _, _ in imports():
        edges.setdefault(a, set()).add(b)
    for resolver in resolvers:
        edges.setdefault(resolver, set()).update(named)
    cycle = find_cycle(edges)
    assert cycle is None, f"importing a method's path closes an import circle: {' -> '.join(cycle)}"
