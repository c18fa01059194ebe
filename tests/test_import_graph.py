"""The package's modules import one way: no cycle in the import graph of src/vil, counting imports inside
functions too (a lazy import hides a circle from Python, not from a reader).
"""

import ast
from pathlib import Path

import vil

PACKAGE_ROOT = Path(vil.__file__).parent


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = ("vil", *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # "from a import b" imports the module a.b if there is one, else the name b of module a
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {target for target in found if target in modules and target != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    on_path: list[str] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all its imports are explored

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        on_path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return on_path[on_path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        on_path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE_ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_lazy_import_back_is_a_cycle(tmp_path):
    # the shape of the circle this test exists for: a factory importing its loader inside a function
    (tmp_path / "models").mkdir()
    (tmp_path / "__init__.py").write_text("from .models.factory import create_model\n")
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "factory.py").write_text(
        "def create_model():\n    from ..pretrained import load\n    return load()\n"
    )
    (tmp_path / "pretrained.py").write_text("from .models.factory import resolve_config\n")
    assert find_cycle(import_graph(tmp_path)) == ["vil.models.factory", "vil.pretrained", "vil.models.factory"]


def test_a_graph_without_cycles_passes():
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
