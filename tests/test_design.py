"""The package's shape (docs/DESIGN.md): no import cycle, function-level imports included."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spermfuse"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(
    source: str, name: str, is_package: bool, modules: set[str], type_checking: bool = False
) -> set[str]:
    """The package's own modules that module ``name`` imports anywhere in ``source`` (top level or
    inside functions), except under ``if TYPE_CHECKING:`` (never run) unless ``type_checking``."""
    package = name if is_package else name.rpartition(".")[0]
    tree = ast.parse(source)
    blocks = [node for node in ast.walk(tree) if is_type_checking_block(node) and not type_checking]
    skipped = {id(child) for node in blocks for child in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # "from . import x" imports module x; "from .m import f" imports module m
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {module for module in found if module in modules and module != name}


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {
        module_name(path): imported_modules(
            path.read_text(), module_name(path), path.name == "__init__.py", modules, type_checking
        )
        for path in paths
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child) :] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_sees_function_level_imports_and_skips_type_checking_ones():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\ndef f():\n    from . import b\n    from ..top import x\n"
    modules = {"pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.top"}
    assert imported_modules(source, "pkg.sub.a", False, modules) == {"pkg.sub.b", "pkg.top"}


def test_a_cycle_is_found_and_named():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_type_hints_close_no_cycle_either():
    """An import for hints only is still a dependency of the idea: the layers hold for it too."""
    assert find_cycle(import_graph(type_checking=True)) is None


def import_layers(graph: dict[str, set[str]]) -> dict[int, set[str]]:
    """Modules by layer: one above the highest module each imports (the package itself left out)."""
    layer: dict[str, int] = {}

    def of(module: str) -> int:
        if module not in layer:
            layer[module] = 1 + max((of(d) for d in graph[module] if d != "spermfuse"), default=0)
        return layer[module]

    by_layer: dict[int, set[str]] = {}
    for module in graph:
        if module != "spermfuse":
            by_layer.setdefault(of(module), set()).add(module.removeprefix("spermfuse."))
    return by_layer


def test_the_design_page_lists_the_import_layers_as_they_are():
    text = (PACKAGE.parent / "docs" / "DESIGN.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([a-z0-9_., ]+) \|$", text, re.M)
    documented = {int(number): {name.strip() for name in names.split(",")} for number, names in rows}
    assert documented == import_layers(import_graph()), "docs/DESIGN.md's import layers are stale: update the table"


def test_the_code_is_formatted_at_the_configured_line_length():
    """pyproject.toml's [tool.ruff] line length, kept by `ruff format` (requirements-dev installs it)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
