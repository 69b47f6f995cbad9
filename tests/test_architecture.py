"""The package's architecture, read from its imports (lazy ones inside functions included): pipelines import
only the library, the library imports no Kedro, no module imports itself back through others."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "rxrx1_pipeline"
KEDRO_FREE = ("nn", "storage", "leak")  # torch, pixels and the leak run without Kedro (and scripts use them so)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved), at any depth of its code."""
    found, package = set(), module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_no_pipeline_imports_another():
    crossings = [(m, i) for m, imports in MODULES.items() if m.startswith("rxrx1_pipeline.pipelines.")
                 for i in imports if i.startswith("rxrx1_pipeline.pipelines.")
                 and i.split(".")[2] != m.split(".")[2]]
    assert not crossings


def test_the_library_imports_no_kedro_and_no_pipeline():
    bad = [(m, i) for m, imports in MODULES.items() if m.split(".")[1:2] and m.split(".")[1] in KEDRO_FREE
           for i in imports if i.split(".")[0] in ("kedro", "kedro_datasets", "kedro_mlflow")
           or i.startswith(("rxrx1_pipeline.kedro_io", "rxrx1_pipeline.pipelines", "rxrx1_pipeline.hooks",
                            "rxrx1_pipeline.settings"))]
    assert not bad


def test_the_package_root_holds_the_entry_points_only():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "hooks.py", "pipeline_registry.py", "schema.py", "settings.py"]


def test_no_import_circle():
    graph = {m: {i for i in imports if i in MODULES and i != m} for m, imports in MODULES.items()}
    graph = {m: {i for i in targets if not m.startswith(i + ".")} for m, targets in graph.items()}  # a package's
    # modules reach their own __init__ by being imported, which is no circle

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            assert target not in path, "import circle: " + " -> ".join(path[path.index(target):] + [target])
            if target not in done:
                visit(target, path + [target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [module])


def test_a_crossing_would_be_seen(tmp_path):
    (tmp_path / "rxrx1_pipeline" / "pipelines" / "a").mkdir(parents=True)
    file = tmp_path / "rxrx1_pipeline" / "pipelines" / "a" / "nodes.py"
    file.write_text("def f():\n    from rxrx1_pipeline.pipelines.b.nodes import g\n    from ..c import h\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "rxrx1_pipeline"
    try:
        assert imports_of(file) >= {"rxrx1_pipeline.pipelines.b.nodes", "rxrx1_pipeline.pipelines.c.h"}
    finally:
        PACKAGE = saved
