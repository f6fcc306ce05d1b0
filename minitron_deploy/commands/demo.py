"""``minitron demo``: the embedded SmolLM2-135M demo (prune, distill, evaluate)."""

from __future__ import annotations

import argparse

#: Minutes the whole demo may take by default: a 10-minute target, with margin.
DEFAULT_BUDGET_MIN = 9.0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="prune, distill and evaluate the embedded SmolLM2-135M "
                                    "teacher on local text (recipes/demo.yaml)",
                       epilog="example (a 5-minute run; the same command again reuses its "
                              "stages):\n  minitron demo --work-dir out/demo --time-budget 5")
    d.add_argument("--work-dir", default="out/demo", help="stage outputs; re-runs reuse them")
    d.add_argument("--recipe", help="another recipe file (default: the packaged demo recipe)")
    d.add_argument("--target-params", type=float,
                   help="override prune.target_params (default: the recipe's)")
    d.add_argument("--time-budget", type=float, default=DEFAULT_BUDGET_MIN, metavar="MINUTES",
                   help="minutes the whole demo may take: distillation tokens are sized to "
                        "this machine's measured speed, up to the recipe's (default "
                        f"{DEFAULT_BUDGET_MIN:g})")
    d.add_argument("--tokens", type=int,
                   help="override distill.tokens and skip the sizing to --time-budget "
                        "(default: sized)")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..pipeline.demo import run_demo

    overrides = {k: v for k, v in (("prune.target_params", args.target_params),
                                   ("distill.tokens", args.tokens)) if v is not None}
    run_demo(args.work_dir, args.recipe, overrides,
             None if args.tokens is not None else args.time_budget)
