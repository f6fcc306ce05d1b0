"""``minitron compress``: the whole recipe in one command (prune, distill, export, eval,
bench), resumable, or ``--dry-run`` for the resolved plan."""

from __future__ import annotations

import argparse

import yaml

from ..errors import MinitronError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="run a recipe end to end: prune, distill, export, "
                                        "eval, bench (resumable stages)")
    p.add_argument("--recipe", required=True, help="recipe YAML (see recipes/)")
    p.add_argument("--work-dir", help="stage outputs (default: out/<recipe name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set distill.tokens=2e6 --set device=cuda")
    p.add_argument("--dry-run", action="store_true",
                   help="print shapes, parameters and memory per stage; run nothing")
    p.add_argument("--device-memory-gb", type=float,
                   help="memory of the target device for --dry-run when it is not present here")
    p.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    """``["distill.tokens=2e6"]`` -> ``{"distill.tokens": 2000000.0}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MinitronError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> None:
    from ..plan import GIB, check_fits, device_memory, format_plan, plan_recipe
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    work = args.work_dir or f"out/{recipe.name}"
    if args.dry_run:
        plans = plan_recipe(recipe, work)
        available = (int(args.device_memory_gb * GIB) if args.device_memory_gb
                     else device_memory(recipe.device))
        print(format_plan(plans, recipe.device, available), end="")
        check_fits(plans, recipe.device, available)
        return
    from ..pipeline import run_pipeline, summary

    print(summary(run_pipeline(recipe, work)), end="")
