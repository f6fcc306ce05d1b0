"""``minitron demo``: the embedded SmolLM2-135M demo."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="prune the embedded SmolLM2-135M teacher on local text")
    d.add_argument("--work-dir", default="out/demo")
    d.add_argument("--target-params", type=float, default=0.5)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    run_demo(args.work_dir, args.target_params)
