"""The layering contract (docs/architecture.md, "Layers"), checked on the source with ``ast``.

* ``mtcolor/`` is the library: none of its modules imports an application package
  (``mtcolor.pipelines``, ``mtcolor.training``, ``mtcolor.dataset_builder``, ``mtcolor.webui``,
  ``mtcolor.benchmarks``: the repository's top-level folders, installed under the ``mtcolor``
  namespace), at any level (inside functions too). The exceptions are ``mtcolor/__init__.py``'s lazy exports and the command line
  ``mtcolor/cli/*``, which reach up inside functions only.
* Runtime code (everything outside ``tests/``) does not import the test helpers ``mtcolor.testing``.
* The project's module-level import graph (imports that run when a module is imported: not inside
  functions, not under ``if TYPE_CHECKING:``) has no cycle.
* Counting imports inside functions too, there is no cycle either (a function-level import must not
  hide one), leaving out the modules allowed to reach up lazily.

Each failure names ``file:line`` of the offending import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the repository's application folders; each installs as ``mtcolor.<folder>`` (pyproject.toml)
FOLDERS = ("pipelines", "training", "dataset_builder", "webui", "benchmarks")
PACKAGES = ("mtcolor", *FOLDERS)
APPLICATIONS = tuple(f"mtcolor.{folder}" for folder in FOLDERS)
#: library modules allowed to import applications (inside functions): lazy exports and the CLI
REACH_UP_ALLOWED = ("mtcolor/__init__.py", "mtcolor/cli/")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] in FOLDERS:
        parts.insert(0, "mtcolor")
    return ".".join(parts)


def _project_files() -> dict[str, Path]:
    """``{module name: path}`` of every project module (the top-level packages, not tests)."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "embedded" in path.relative_to(ROOT).parts:  # model folders, no code
                continue
            files[_module_name(path)] = path
    return files


def _test_files() -> dict[str, Path]:
    return {f"tests.{path.stem}": path for path in sorted((ROOT / "tests").glob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """``(imported module or name path, line, at module level)`` of every import in ``path``.

    Relative imports are resolved against ``module``; ``from a import b`` gives ``"a.b"`` (the
    caller decides whether ``a.b`` is a module or a name of ``a``). "Module level" means executed
    on import: not inside a function, not under ``if TYPE_CHECKING:``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
                continue
            if isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, False)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[: len(package) - (child.level - 1)]
                    base = ".".join([*package, base] if base else package)
                found.extend(
                    (f"{base}.{alias.name}" if base else alias.name, child.lineno, top)
                    for alias in child.names
                )
            visit(child, top)

    visit(tree, True)
    return found


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import of ``name`` loads (longest existing prefix), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _graph(modules: dict[str, Path], module_level_only: bool) -> dict:
    """``{module: {imported module: (file, line)}}`` between the given project modules."""
    graph: dict[str, dict[str, tuple[str, int]]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for name, line, top in _imports(path, module):
            if module_level_only and not top:
                continue
            target = _target(name, modules)
            if target is None or target == module:
                continue
            edges.setdefault(target, (str(path.relative_to(ROOT)), line))
    return graph


def _cycles(graph: dict) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _describe(component: list[str], graph: dict) -> str:
    members = set(component)
    lines = [
        f"  {source} -> {target} ({where[0]}:{where[1]})"
        for source in component
        for target, where in sorted(graph.get(source, {}).items())
        if target in members
    ]
    return "cycle among " + ", ".join(component) + ":\n" + "\n".join(lines)


def test_library_does_not_import_applications():
    violations = []
    for path in sorted((ROOT / "mtcolor").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative == REACH_UP_ALLOWED[0] or relative.startswith(REACH_UP_ALLOWED[1]):
            continue
        for name, line, _ in _imports(path, _module_name(path)):
            if any(name == app or name.startswith(app + ".") for app in APPLICATIONS):
                violations.append(f"{relative}:{line}: imports {name}")
    assert not violations, "library modules import applications:\n" + "\n".join(violations)


def test_applications_are_imported_by_their_installed_names():
    """``pipelines.x`` is importable only from a checkout's root; every import says ``mtcolor.pipelines.x``
    (the name the wheel installs), so one module never loads twice under two names."""
    violations = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for module, path in {**_project_files(), **_test_files()}.items()
        for name, line, _ in _imports(path, module)
        if name.split(".")[0] in FOLDERS
    ]
    assert not violations, "imports by folder name:\n" + "\n".join(violations)


def test_runtime_code_does_not_import_test_helpers():
    violations = []
    for module, path in _project_files().items():
        if module == "mtcolor.testing":
            continue
        for name, line, _ in _imports(path, module):
            if name == "mtcolor.testing" or name.startswith("mtcolor.testing."):
                violations.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not violations, "runtime modules import mtcolor.testing:\n" + "\n".join(violations)


def test_module_level_import_graph_is_acyclic():
    graph = _graph(_project_files(), module_level_only=True)
    cycles = _cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


def test_no_cycle_hidden_by_function_level_imports():
    """Counting imports inside functions too, the graph is acyclic (a function-level import must not
    hide a cycle, e.g. a benchmark and a recipe importing each other), except through the modules
    allowed to reach up lazily (``mtcolor/__init__.py``, ``mtcolor/cli/*``), which are left out."""
    modules = {
        name: path
        for name, path in _project_files().items()
        if name != "mtcolor" and not name.startswith("mtcolor.cli")
    }
    graph = _graph(modules, module_level_only=False)
    cycles = _cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


def test_checker_sees_imports_inside_functions_and_relative_imports(tmp_path):
    """The checker itself: a function-level relative import is found and resolved."""
    source = tmp_path / "pkg" / "mod.py"
    source.parent.mkdir()
    source.write_text("import os\n\ndef f():\n    from .other import thing\n    from ..up import x\n")
    found = _imports(source, "pkg.mod")
    assert ("os", 1, True) in found
    assert ("pkg.other.thing", 4, False) in found and ("up.x", 5, False) in found
