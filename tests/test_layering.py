"""The package reads as the pipeline, floor by floor: every module's imports (function-level
and type-checking ones included) point to its own package or to a lower floor, packages on
one floor never import each other, no two modules import each other even indirectly, and
nothing in the package reaches the third-party plugins."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import minitron_deploy

ROOT = Path(minitron_deploy.__file__).parent
PACKAGE = "minitron_deploy"

#: Floors from the ground up; a package imports only its own modules and lower floors.
FLOORS = (
    ("_version", "core"),  # errors, schema, files, shapes, devices, precision, ranks, hub
    ("arch",),  # one adapter per model family; loading checkpoints of them
    ("data",),  # text, token files, shipped assets
    ("eval", "importance"),  # scoring models: tasks and perplexity; unit importance
    ("pruning",),  # the prune stage: target, selection, trimming
    ("quantize",),  # quantized checkpoints (distillation trains through their fake quantizers)
    ("distill", "export", "serve"),  # the other stages
    ("bench",),  # throughput (serving engines among its backends)
    ("search",),  # student search: prunes, distills, evaluates and predicts speed
    ("pipeline",),  # recipes, resumable stages, the plan, the demo, the report
    ("commands",),  # one module per subcommand
    ("cli",),  # the entry point
    ("",),  # the package itself (its public names are loaded lazily)
)
FLOOR_OF = {package: level for level, floor in enumerate(FLOORS) for package in floor}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _package(module: str) -> str:
    """The top-level package (or root module) of ``module`` inside the package."""
    return module.split(".")[1] if "." in module else ""


def _imports(name: str, prefix: str = PACKAGE) -> set[str]:
    """Modules under ``prefix`` that ``name`` imports anywhere in its file: ``from .pkg import
    x`` counts ``pkg.x`` where that is a module, else ``pkg`` (its __init__)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == prefix)
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{node.module}" if node.module else anchor
        elif node.module and node.module.split(".")[0] == prefix:
            base = node.module
        else:
            continue
        submodules = {f"{base}.{alias.name}" for alias in node.names} & set(MODULES)
        found |= submodules
        if len(submodules) < len(node.names):  # names defined in the module ``base`` itself
            found.add(base)
    return {m for m in found if m.split(".")[0] == prefix and (m in MODULES or prefix != PACKAGE)}


def test_every_package_has_a_floor():
    assert {_package(m) for m in MODULES} <= set(FLOOR_OF)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_or_stay_in_the_package(name):
    own = _package(name)
    wrong = [dep for dep in _imports(name) if _package(dep) != own
             and FLOOR_OF[_package(dep)] >= FLOOR_OF[own]]
    assert wrong == [], f"{name} imports {wrong} (floor {FLOOR_OF[own]}: {own or 'root'})"


def test_no_import_circles():
    graph = {name: _imports(name) - {name} for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_package_never_imports_the_plugins():
    assert [m for m in MODULES if _imports(m, prefix="minitron_plugins")] == []


def test_the_walk_sees_imports_inside_functions_and_type_checking():
    assert "minitron_deploy.search" in _imports("minitron_deploy.pipeline.run")
    assert "minitron_deploy.importance.settings" in _imports("minitron_deploy.importance.criteria")


def test_the_root_holds_only_entry_points():
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["__init__.py", "_version.py", "cli.py"]



def test_importing_the_package_loads_no_framework():
    """``import minitron_deploy`` stays cheap: torch, transformers, ModelOpt and vLLM load
    with the first public name that needs them."""
    code = ("import sys, minitron_deploy; print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'torch', 'transformers', 'modelopt', 'vllm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves():
    subpackages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert not set(minitron_deploy.__all__) & subpackages  # a subpackage would shadow the name
    for name in minitron_deploy.__all__:
        assert getattr(minitron_deploy, name) is not None, name
    with pytest.raises(AttributeError):
        minitron_deploy.no_such_name  # noqa: B018
