"""Helpers for tests that check a setting on every surface: the command's parser and the
refusal a recipe gets."""

import argparse
from pathlib import Path

import pytest
import yaml

from minitron_deploy.cli import build_parser
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.pipeline.recipe import load_recipe


def subparser(name: str) -> argparse.ArgumentParser:
    """The parser of ``minitron NAME``."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def recipe_refusal(folder: Path, section: str, settings: dict) -> str:
    """The error of loading a minimal recipe ``r.yaml`` whose ``section`` is ``settings``."""
    recipe = folder / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "teacher": "/m", "data": "/d",
                                      "heldout": "/h", section: settings}))
    with pytest.raises(MinitronError) as err:
        load_recipe(recipe)
    return str(err.value)
