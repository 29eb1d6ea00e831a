"""The layers hold by construction: no module imports a layer above its own, at the top or inside a function,
and the project's modules import each other without a cycle.

The layers, from the bottom (``liverlesion_ops/__init__.py`` says what each holds):

0. ``liverlesion``, the domain package: imports no orchestration (ZenML, MLflow, DVC, Great Expectations,
   the command line) and nothing of ``liverlesion_ops``;
1. ``liverlesion_ops`` basics: where the project and its state are, log lines;
2. services: tracking, DVC, data validation, the registry, the team server, the cluster;
3. ZenML steps; 4. ZenML pipelines; 5. what each command does; 6. the command line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ORCHESTRATION = ("zenml", "mlflow", "dvc", "dvc_data", "great_expectations", "typer", "liverlesion_ops")
LAYERS = {
    "liverlesion_ops.project": 1,
    "liverlesion_ops.environment": 1,
    "liverlesion_ops.logs": 1,
    "liverlesion_ops.tracking": 2,
    "liverlesion_ops.datastore": 2,
    "liverlesion_ops.dvcobjects": 2,
    "liverlesion_ops.validation": 2,
    "liverlesion_ops.registry": 2,
    "liverlesion_ops.segmenters": 2,
    "liverlesion_ops.audit": 2,
    "liverlesion_ops.team_server": 2,
    "liverlesion_ops.team_auth": 2,
    "liverlesion_ops.kubeflow": 2,
    "liverlesion_ops.lesion_classifier": 2,
    "liverlesion_ops.steps": 3,
    "liverlesion_ops.pipelines": 4,
    "liverlesion_ops.runs": 5,
    "liverlesion_ops.retrain": 5,
    "liverlesion_ops.prediction": 5,
    "liverlesion_ops.evaluation": 5,
    "liverlesion_ops.importing": 5,
    "liverlesion_ops.schedule": 5,
    "liverlesion_ops.cli": 6,
}


def layer_of(module: str) -> int | None:
    """The layer of a module of the project (0: the domain package), None for any other module."""
    if module == "liverlesion" or module.startswith("liverlesion."):
        return 0
    if module == "liverlesion_ops":  # its docstring only
        return 1
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """Every module a file imports (``from a import b`` gives ``a.b`` and ``a``), with its line; with
    ``top_level_only``, only what runs when the module is imported (not inside a function)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def project_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "egg-info" not in str(p))


def test_every_project_module_has_a_layer():
    unplaced = [module_name(p) for p in project_files() if layer_of(module_name(p)) is None]
    assert unplaced == [], f"give these modules a layer in LAYERS: {unplaced}"


def test_no_module_imports_a_layer_above_its_own_even_inside_a_function():
    violations = []
    for path in project_files():
        own = layer_of(module_name(path))
        for imported, line in imports(path):
            layer = layer_of(imported)
            if layer is not None and layer > own:
                violations.append(f"{path.relative_to(SRC)}:{line} (layer {own}) imports {imported} (layer {layer})")
    assert violations == [], "\n".join(violations)


def test_the_domain_package_names_no_orchestration_anywhere():
    violations = [
        f"{path.relative_to(SRC)}:{line} imports {imported}"
        for path in (SRC / "liverlesion").rglob("*.py")
        for imported, line in imports(path)
        if imported.split(".")[0] in ORCHESTRATION
    ]
    assert violations == [], "\n".join(violations)


def test_the_served_model_imports_only_the_domain_package_and_mlflow():
    """It is logged from code with the domain package beside it: nothing else of the project is shipped."""
    served = SRC / "liverlesion_ops" / "lesion_classifier.py"
    own = [name for name, _ in imports(served) if name.startswith("liverlesion_ops")]
    assert own == []


def test_the_project_modules_import_each_other_without_a_cycle():
    """At import time (top-level imports): a cycle would make the import order matter."""
    graph: dict[str, set[str]] = {}
    modules = {module_name(p): p for p in project_files()}
    for name, path in modules.items():
        graph[name] = {imported for imported, _ in imports(path, top_level_only=True) if imported in modules} - {name}

    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if state.get(nxt) is None:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if state.get(name) is None:
            visit(name, [name])


def test_the_check_finds_a_lazy_import_of_a_higher_layer(tmp_path):
    """The rule sees through function bodies: a domain module importing the CLI inside a function is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from liverlesion_ops.cli import app\n    return app\n")
    assert [name for name, _ in imports(probe) if layer_of(name) == 6] == [
        "liverlesion_ops.cli",
        "liverlesion_ops.cli.app",
    ]


SCRIPT = """
import importlib, pkgutil, sys
import liverlesion
for module in pkgutil.walk_packages(liverlesion.__path__, "liverlesion."):
    importlib.import_module(module.name)
print(sorted({name.split(".")[0] for name in sys.modules} & {"zenml", "mlflow", "dvc", "great_expectations", "typer"}))
"""


def test_importing_every_domain_module_loads_no_orchestration():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
