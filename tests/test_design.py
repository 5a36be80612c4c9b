"""The package's shape (docs/DESIGN.md): no import cycle, imports only down the layers DESIGN.md
prescribes, a core that stands alone; function-level imports included."""

import ast
import re
import sys
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


def package_of(module: str) -> str:
    """The sub-package a module belongs to (``core``, ``store``, ...), or ``support`` for the
    modules directly under spermfuse/ and the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else "support"


def design_rules() -> tuple[dict[str, int], set[tuple[str, str]]]:
    """docs/DESIGN.md's layer table (``| layer | packages |``) and its named sibling imports
    (``- allowed: a -> b``)."""
    text = (PACKAGE.parent / "docs" / "DESIGN.md").read_text()
    layers = {
        name.strip(): int(number)
        for number, names in re.findall(r"^\| (\d+) \| ([a-z_, ]+) \|", text, re.M)
        for name in names.split(",")
    }
    allowed = set(re.findall(r"^- allowed: ([a-z_]+) -> ([a-z_]+)", text, re.M))
    return layers, allowed


def layer_violations(graph: dict[str, set[str]], layers: dict[str, int], allowed: set[tuple[str, str]]) -> list[str]:
    """Every import that goes to its own layer's sibling or up, unless DESIGN.md names it."""
    found = []
    for module, imported in sorted(graph.items()):
        for other in sorted(imported):
            mine, theirs = package_of(module), package_of(other)
            if mine != theirs and layers[theirs] >= layers[mine] and (mine, theirs) not in allowed:
                found.append(f"{module} -> {other}")
    return found


def test_the_layer_rule_catches_an_import_upward_or_between_siblings():
    layers, allowed = {"core": 0, "support": 1, "store": 2, "data": 2}, {("store", "data")}
    graph = {"spermfuse.core.a": {"spermfuse.store.b"}, "spermfuse.data.c": {"spermfuse.store.b"}}
    graph |= {"spermfuse.store.b": {"spermfuse.data.c", "spermfuse.core.a"}}
    assert layer_violations(graph, layers, allowed) == [
        "spermfuse.core.a -> spermfuse.store.b",
        "spermfuse.data.c -> spermfuse.store.b",
    ]


def test_every_sub_package_has_a_layer_in_the_design_page():
    layers, _ = design_rules()
    packages = {package_of(module) for module in import_graph()}
    assert packages <= set(layers), f"not in docs/DESIGN.md's layer table: {sorted(packages - set(layers))}"


def test_imports_go_down_the_layers_of_the_design_page():
    """Type hints included: an import for hints is still a dependency of the idea."""
    layers, allowed = design_rules()
    assert layer_violations(import_graph(type_checking=True), layers, allowed) == []


def imported_packages(source: str) -> set[str]:
    """The top-level names of every absolute import in ``source``, function-level ones included."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


CORE_MAY_IMPORT = {"torch", "torchvision", "numpy", "scipy", "sklearn", "PIL"}


def test_core_imports_only_itself_the_standard_library_and_six_packages():
    core = PACKAGE / "core"
    outside = {
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for path in core.rglob("*.py")
        for name in imported_packages(path.read_text())
        if name not in CORE_MAY_IMPORT and name not in sys.stdlib_module_names
    }
    assert not outside, sorted(outside)
    graph = import_graph(type_checking=True)
    escapes = [
        f"{m} -> {d}" for m, ds in graph.items() if package_of(m) == "core" for d in ds if package_of(d) != "core"
    ]
    assert escapes == []


def test_a_dozen_modules_at_most_directly_under_the_package():
    assert len(list(PACKAGE.glob("*.py"))) <= 12


def test_a_module_over_450_lines_says_why_at_its_top():
    """A long module is a list (a report's sections, a benchmark's suites); its docstring says so."""
    long = [
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*.py")
        if len(path.read_text().splitlines()) > 450
        and "Long because" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    ]
    assert long == []


def undocumented(source: str) -> list[str]:
    """The public functions and classes at the top of a module without a docstring, and the
    public functions without a return hint."""
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        if ast.get_docstring(node) is None:
            found.append(f"{node.name} (no docstring)")
        if isinstance(node, ast.FunctionDef) and node.returns is None:
            found.append(f"{node.name} (no return hint)")
    return found


def test_the_docstring_rule_catches_a_bare_function_and_class():
    source = "def bare(x):\n    return x\n\n\nclass Bare:\n    pass\n\n\ndef _private():\n    pass\n"
    source += 'def told() -> None:\n    """Says."""\n'
    assert undocumented(source) == ["bare (no docstring)", "bare (no return hint)", "Bare (no docstring)"]


def test_every_public_function_and_class_has_a_docstring_and_every_function_a_return_hint():
    """The style's rule for code others copy from: a reader learns what a name does without reading its body."""
    missing = [
        f"{path.relative_to(PACKAGE.parent).as_posix()}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name in undocumented(path.read_text())
    ]
    assert missing == []


def test_the_code_is_formatted_at_the_configured_line_length():
    """pyproject.toml's [tool.ruff] line length, kept by `ruff format` (requirements-dev installs it)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def requirements(path: Path) -> dict[str, str]:
    """Each package a requirements (or constraints) file lists, normalised as pip compares names,
    and its version specifier."""
    found = {}
    for line in (line.split("#")[0].strip() for line in path.read_text().splitlines()):
        if line:
            name, specifier = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)", line).groups()
            found[name.lower().replace("_", "-")] = specifier
    return found


def test_ci_installs_every_requirement_at_a_pinned_version():
    """.ci/run installs with -c constraints.txt: a requirement without an exact version there
    would follow each new release, and CI with it."""
    root = PACKAGE.parent
    required = requirements(root / "requirements.txt") | requirements(root / "requirements-dev.txt")
    pinned = {name for name, specifier in requirements(root / "constraints.txt").items() if specifier.startswith("==")}
    unpinned = [name for name, specifier in required.items() if not specifier.startswith("==") and name not in pinned]
    assert unpinned == []
    assert "-c constraints.txt" in (root / ".ci" / "run").read_text()
