"""Studio's own modules import one another without a cycle (docs/architecture.md §2): the
task calls the services, which send it by name; the reads sit apart from the writes; the
presenter presents what it is given. Read from the source with `ast`, so an import inside a
function counts as much as one at the top: it closes the same circle, only later."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("studio", "generation", "gallery")
SKIPPED = {"migrations", "__pycache__", "tests"}


def own_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if not SKIPPED.intersection(parts):
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name an import in the module names, relative ones resolved; for
    `from a import b`, both `a` and `a.b` (b may be a module or a name in a)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Each own module -> the own modules it imports (a name resolves to its longest own
    module prefix; a package's own modules importing it are not edges)."""
    modules = own_modules(root, packages)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(f"{name}."):
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each
    sorted: every cycle of the graph lies within one."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_the_check_finds_a_cycle(graph, expected):
    assert cycles(graph) == expected


def test_the_check_sees_function_local_and_relative_imports(tmp_path):
    package = tmp_path / "app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "services.py").write_text("def dispatch():\n    from .tasks import run\n")
    (package / "tasks.py").write_text("from app import services\n")
    graph = import_graph(tmp_path, ("app",))
    assert graph == {"app": set(), "app.services": {"app.tasks"}, "app.tasks": {"app.services"}}
    assert cycles(graph) == [["app.services", "app.tasks"]]


def test_studios_modules_import_each_other_without_a_cycle():
    assert cycles(import_graph()) == []
