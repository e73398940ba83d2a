"""The package's imports point one way: no cycle (lazy imports included), and the floors are
leaves. Read from the source with ``ast``, so nothing is imported to check it."""

import ast
from pathlib import Path

import recbole_fofa

PACKAGE = Path(recbole_fofa.__file__).resolve().parent
TOP = PACKAGE.name
# The ground floor: each imports nothing of the plugin but compat.
FLOORS = ("compat", "registry", "budget", "cost", "data_check")


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    """{module name: (source path, is a package)} of every module of the package."""
    return {_module_name(path): (path, path.name == "__init__.py")
            for path in sorted(PACKAGE.rglob("*.py"))}


def _with_parents(name, modules, importer):
    """``name`` and the packages above it that importing it runs: not the top package, and not
    the importer's own packages (already running when the importer runs)."""
    parts = name.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    parents = {".".join(parts[:i]) for i in range(2, len(parts))} - own
    return {m for m in parents | {name} if m in modules and m != TOP}


def _imports(name, path, is_package, modules):
    """Modules of the package that ``name`` imports anywhere in its source (module level or
    inside functions), each with the packages above it. ``from pkg import sub`` imports the
    submodule ``pkg.sub``; ``from pkg import name`` imports ``pkg``'s ``__init__``."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _with_parents(alias.name, modules, name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found |= _with_parents(submodule if submodule in modules else source, modules,
                                       name)
    found.discard(name)
    return found


def import_graph():
    """{module: sorted modules of the package it imports}."""
    modules = _modules()
    return {name: sorted(_imports(name, path, is_package, modules))
            for name, (path, is_package) in modules.items()}


def find_cycle(graph):
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in graph.get(node, ()):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_floor_modules_import_nothing_of_the_plugin_but_compat():
    graph = import_graph()
    allowed = {f"{TOP}.compat"}
    for floor in FLOORS:
        extra = set(graph[f"{TOP}.{floor}"]) - allowed
        assert not extra, f"{TOP}.{floor} imports {sorted(extra)}"


def test_imports_are_resolved_as_python_resolves_them():
    graph = import_graph()
    # `from recbole_fofa import checks` imports recbole_fofa.checks, not the top package
    assert f"{TOP}.checks" in graph[f"{TOP}.model.forward_ofa"]
    # importing a submodule runs its package's __init__
    assert f"{TOP}.search" in graph[f"{TOP}.trainer.trainer"]
    assert TOP not in {m for targets in graph.values() for m in targets}
