"""The rooms import one way (docs/design.md §2), read from the source with ``ast``, imports inside functions
included: no import cycle among the project's modules, Faust only in the app and the agents, ``online/``
and ``models/`` never import ``streams/``, and no module reads another module's ``_private`` names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streams", "online", "models", "benchmarks")

#: The modules that may import Faust or mode (Faust's runtime): the app factory and the agents.
FAUST_ALLOWED = ("streams.app", "streams.agents", "streams.compat")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def _imported_names(module: str, tree: ast.Module) -> list[tuple[int, str]]:
    """(line, dotted name) of everything ``module`` imports, anywhere in the file; ``from a import b`` gives
    both ``a`` and ``a.b`` (``b`` may be a module or a name in ``a``); relative imports made absolute."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names.append((node.lineno, base))
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return names


def _project_module(name: str) -> str | None:
    """The project module ``name`` is or lies in (``streams.config.Settings`` -> ``streams.config``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, tree in TREES.items():
        targets = {_project_module(name) for _line, name in _imported_names(module, tree)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_walk_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from .records import dumps\n")
    assert (2, "streams.records") in _imported_names("streams.tools", tree)
    assert _project_module("streams.records.dumps") == "streams.records"


def test_no_import_cycle_among_the_project_modules():
    graph = _graph()
    cycles = _cycles(graph)
    detail = [{m: sorted(graph[m] & set(c)) for m in c} for c in cycles]
    assert not cycles, f"import cycles (module -> the cycle's modules it imports): {detail}"


def _is_faust(name: str) -> bool:
    return name.split(".")[0] in ("faust", "mode")


def test_faust_is_imported_only_by_the_app_and_the_agents():
    offenders = [f"{module}:{line} imports {name}"
                 for module, tree in TREES.items()
                 if not any(module == a or module.startswith(a + ".") for a in FAUST_ALLOWED)
                 for line, name in _imported_names(module, tree) if _is_faust(name)]
    assert not offenders, offenders


@pytest.mark.parametrize("room", ["online", "models"])
def test_online_and_models_never_import_streams(room):
    offenders = [f"{module}:{line} imports {name}"
                 for module, tree in TREES.items() if module.split(".")[0] == room
                 for line, name in _imported_names(module, tree) if name.split(".")[0] == "streams"]
    assert not offenders, offenders


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_private_names(tree: ast.Module) -> set[str]:
    """The ``_private`` names a module defines: functions, classes, assignments (``self._x = ...`` too),
    arguments, and strings such as ``__slots__`` entries."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            names.add(node.value)
    return {n for n in names if _private(n)}


def _private_reads(trees: dict[str, ast.Module]) -> list[str]:
    """Every read of another project module's ``_private`` name: ``from m import _x``, and ``obj._x`` where
    ``obj`` is not ``self``/``cls`` and ``_x`` is defined by another project module, not by this one
    (a subclass using its base's ``self._x`` is its own business)."""
    own = {module: _own_private_names(tree) for module, tree in trees.items()}
    everywhere = set().union(*own.values())
    found = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                found += [f"{module}:{node.lineno} from {node.module} import {a.name}"
                          for a in node.names if _private(a.name)]
            elif (isinstance(node, ast.Attribute) and _private(node.attr) and node.attr in everywhere
                  and node.attr not in own[module]
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{module}:{node.lineno} reads {ast.unparse(node)}")
    return found


def test_the_private_check_finds_private_reads():
    trees = {"online.a": ast.parse("class A:\n    __slots__ = ('_n',)\n    def _f(self):\n        return self._n\n"),
             "online.b": ast.parse("from online.a import _g\ndef f(a):\n    return a._n\n"),
             "online.c": ast.parse("class C(A):\n    def f(self):\n        return self._n\n")}
    assert _private_reads(trees) == ["online.b:1 from online.a import _g", "online.b:3 reads a._n"]


def test_no_module_reads_another_modules_private_names():
    found = _private_reads(TREES)
    assert not found, found
