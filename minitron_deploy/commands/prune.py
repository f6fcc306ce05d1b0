"""``minitron prune``: score importance and trim a checkpoint to a target shape."""

from __future__ import annotations

import argparse

from ..pruning.settings import PruneSettings
from .common import (
    add_device_args,
    add_input_args,
    add_settings_args,
    settings_from_args,
)

_EXAMPLE = """example (Llama-3.1-8B to a 4.5B width-pruned model, scores kept for reuse):
  minitron prune --model meta-llama/Llama-3.1-8B --calib calib.jsonl \\
      --target-params 4.5e9 --out out/llama-4.5b
  minitron prune --model meta-llama/Llama-3.1-8B --scores out/llama-4.5b \\
      --drop-layers 16-31 --out out/llama-depth"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="score importance and trim a checkpoint to a target shape",
                       epilog=_EXAMPLE)
    add_input_args(p)
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    add_settings_args(p, PruneSettings)
    add_device_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..pruning.api import prune
    from ..pruning.report import print_prune_summary

    settings = settings_from_args(PruneSettings, args)
    report = prune(args.model, args.out, settings, calib=args.calib, device=args.device,
                   dtype=args.dtype)
    print_prune_summary(report)
