"""The package's shape: no private name imported from another module, and no circle among the imports that run
when a module is imported (those at module level; a function's own imports run later and may break a circle).
Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "prunedrop"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(module: str, path: Path) -> list[tuple[str, str, bool]]:
    """``(imported module, name or "", at module level)`` for every ``import``/``from`` of a prunedrop module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str, bool]] = []

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # never runs
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                found.extend((target, alias.name, top) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.extend((alias.name, "", top) for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    nested_top = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                    visit([n for n in inner if isinstance(n, ast.AST)], nested_top)

    visit(ast.parse(path.read_text(encoding="utf-8")).body, True)
    return [(target, name, top) for target, name, top in found if target.split(".")[0] == "prunedrop"]


def test_no_private_name_is_imported_from_another_module() -> None:
    modules = _modules()
    private = [
        f"{module}: from {target} import {name}"
        for module, path in modules.items()
        for target, name, _ in _imports(module, path)
        if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in modules
    ]
    assert len(modules) > 50 and not private, private


def test_no_import_circle_at_module_level() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        for target, name, top in _imports(module, path):
            if not top:
                continue
            imported = f"{target}.{name}" if f"{target}.{name}" in modules else target
            # importing a.b.c runs a and a.b first (unless the importer is inside them: they are running already)
            parts = imported.split(".")
            for i in range(2, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in modules and step != module and not module.startswith(step + "."):
                    graph[module].add(step)
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert sum(map(len, graph.values())) > 50 and not circles, circles
