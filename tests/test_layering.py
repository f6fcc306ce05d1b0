"""Imports point one way: the stage packages (scoring, trimming, distillation, evaluation,
export, benchmarks, serving) and the ground floor never reach the pipeline, its stages or
the command line, not even through a module they import or a function-level import."""

import ast
from pathlib import Path

import pytest

import minitron_deploy

ROOT = Path(minitron_deploy.__file__).parent
PACKAGE = "minitron_deploy"
STAGE_PACKAGES = ("arch", "bench", "distill", "eval", "export", "importance", "serve")
GROUND_FLOOR = ("errors", "files", "likelihood", "schema")
UPPER = ("minitron_deploy.stages", "minitron_deploy.pipeline", "minitron_deploy.demo",
         "minitron_deploy.cli", "minitron_deploy.commands")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Package modules ``name`` imports anywhere in its file (a package's __init__ included
    for ``from .pkg import x``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            found.update(b for b in bases if b.startswith(PACKAGE))
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{node.module}" if node.module else anchor
        elif node.module and node.module.startswith(PACKAGE):
            base = node.module
        else:
            continue
        found.add(base)
        found.update(f"{base}.{alias.name}" for alias in node.names
                     if f"{base}.{alias.name}" in MODULES)
    return {m for m in found if m in MODULES}


def _reachable(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for dep in _imports(todo.pop()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def _upper(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(UPPER))


@pytest.mark.parametrize("name", sorted(m for m in MODULES
                                        if m.split(".")[1:2] and m.split(".")[1] in STAGE_PACKAGES))
def test_stage_modules_never_reach_the_pipeline(name):
    assert _upper(_reachable(name)) == [], name


@pytest.mark.parametrize("name", GROUND_FLOOR)
def test_ground_floor_imports_no_other_layer(name):
    assert _imports(f"{PACKAGE}.{name}") <= {f"{PACKAGE}.errors"}


def test_the_walk_sees_imports_inside_functions():
    assert "minitron_deploy.stages" in _imports("minitron_deploy.pipeline")
    assert "minitron_deploy.plan" in _imports("minitron_deploy.distill.api")


def test_perplexity_does_not_borrow_the_distillation_loss():
    assert not any(m.startswith("minitron_deploy.distill")
                   for m in _reachable("minitron_deploy.eval.perplexity"))
