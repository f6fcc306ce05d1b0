"""``minitron score``: compute only the importance artifact."""

from __future__ import annotations

import argparse

from ..core.errors import MinitronError
from .common import add_calibration_args, scoring_settings

_EXAMPLE = """example (score once, then prune to several targets without calibrating again):
  minitron score --model meta-llama/Llama-3.1-8B --calib calib.jsonl --block-sizes 1,8,16 \\
      --out scores.safetensors
  minitron prune --model meta-llama/Llama-3.1-8B --scores scores.safetensors \\
      --num-layers 16 --out out/llama-depth"""


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("score", help="only compute the importance artifact", epilog=_EXAMPLE)
    add_calibration_args(s)
    s.add_argument("--out", required=True, help="scores file to write (.safetensors)")
    s.add_argument("--block-sizes", default="1",
                   help="depth block sizes to score, comma separated (e.g. 1,8,16)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..pruning.api import score_checkpoint

    try:
        sizes = sorted({int(k) for k in args.block_sizes.split(",")})
    except ValueError:
        raise MinitronError(f"--block-sizes must be integers, got {args.block_sizes!r}")
    path = score_checkpoint(args.model, args.out, scoring_settings(args),
                            calib=args.calib, block_sizes=sizes, device=args.device,
                            dtype=args.dtype)
    print(f"wrote {path} and {path.with_suffix('.json')}")
