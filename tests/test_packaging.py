"""The package as installed from a wheel: every module and recipe ships, and nothing it needs
at run time is looked up in the source checkout."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.serve import vllm_env

REPO = Path(__file__).resolve().parents[1]
#: Importable package -> its folder in the source tree.
ROOTS = {"minitron_deploy": "minitron_deploy", "minitron_plugins": "plugins",
         "minitron_recipes": "recipes"}


def _shipped(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".py", ".yaml")
            and "__pycache__" not in p.parts]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ROOTS.values():
        shutil.copytree(REPO / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (built,) = (tmp / "dist").glob("*.whl")
    return zipfile.ZipFile(built)


def test_wheel_ships_every_module_and_recipe(wheel):
    names = set(wheel.namelist())
    expected = {f"{package}/{path.relative_to(REPO / folder).as_posix()}"
                for package, folder in ROOTS.items() for path in _shipped(REPO / folder)}
    assert "minitron_deploy/search/__init__.py" in expected
    assert "minitron_recipes/demo.yaml" in expected
    assert sorted(expected - names) == []
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "minitron = minitron_deploy.cli:main" in wheel.read(entry_points).decode()


def _fake_python(folder: Path) -> Path:
    python = folder / ".venv-vllm" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    return python


@pytest.fixture
def installed(tmp_path, monkeypatch) -> Path:
    """The module as a wheel installs it (under site-packages, no checkout above), no
    ``$MINITRON_VLLM_PYTHON`` and no python on PATH; returns an empty working directory."""
    module = tmp_path / "site-packages" / "minitron_deploy" / "serve" / "vllm_env.py"
    monkeypatch.setattr(vllm_env, "__file__", str(module))
    monkeypatch.delenv(vllm_env.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_vllm_env_of_the_working_directory(installed):
    python = _fake_python(installed)
    assert vllm_env.vllm_python() == str(python)


def test_vllm_env_of_the_checkout(installed, tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "minitron_deploy" / "serve").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    monkeypatch.setattr(vllm_env, "__file__",
                        str(checkout / "minitron_deploy" / "serve" / "vllm_env.py"))
    python = _fake_python(checkout)
    assert vllm_env.vllm_python() == str(python)


def test_no_vllm_env_names_what_was_tried(installed):
    with pytest.raises(MinitronError) as refusal:
        vllm_env.vllm_python()
    message = str(refusal.value)
    assert "\n" not in message and "site-packages" not in message
    assert f"tried ${vllm_env.ENV_VAR} (unset), {installed / '.venv-vllm/bin/python'}" in message
