"""The package's shape: no import cycles and no import of a later floor (function-local
imports count), functions of at most `MAX_LINES` lines."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import adaptive_lora

PACKAGE = Path(adaptive_lora.__file__).parent
MAX_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("adaptive_lora", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (lazy imports too).

    A package's `__init__` importing its own children (a re-export) and a module
    importing its enclosing package are not edges: neither can close a cycle of design.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node, name, is_package):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if not target or target == name or name.startswith(target + "."):
                    continue
                if is_package and target.startswith(name + "."):
                    continue
                graph[name].add(target)
    return graph


def test_there_are_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
    assert set(order) == set(graph)


def test_the_cycle_check_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"a"}}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("a two-module cycle went unnoticed")


# The floors of the data flow, lowest first (ARCHITECTURE.md's "Who owns which stage"): a
# module imports only from its own floor and those below. Within a floor, the layout is
# free (the cycle test still holds there).
FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "records", "environment", "progress", "config_fields", "config"),
    ("model",),
    ("data",),
    ("compute",),
    ("allocation",),
    ("adapters",),
    ("methods",),
    ("evaluation_metrics", "evaluation", "loss_cache"),
    ("training",),
    ("run",),
    ("analysis",),
    ("study",),
    ("report",),
    ("api", "adaptive_lora"),
    ("cli",),
)


def floor_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"{module} is on no floor: add it to FLOORS (and ARCHITECTURE.md)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if floor_of(target) > floor_of(module)
    )


def test_no_module_imports_a_floor_above_its_own():
    assert upward_imports(import_graph()) == []


def test_the_floor_check_sees_an_upward_import():
    graph = {"adaptive_lora.config": {"adaptive_lora.report.markdown"}}
    assert upward_imports(graph) == ["adaptive_lora.config -> adaptive_lora.report.markdown"]


def test_no_function_is_over_the_limit():
    """Units cut by what they do: no function over `MAX_LINES` lines, docstring included."""
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"
