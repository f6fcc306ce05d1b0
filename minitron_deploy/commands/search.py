"""``minitron search``: choose the student shape by search under a params, memory or speedup
target."""

from __future__ import annotations

import argparse

from ..search.settings import SearchSettings
from .common import (
    add_device_args,
    add_input_args,
    add_settings_args,
    settings_from_args,
)

_EXAMPLE = """examples:
  # the shapes Llama-3.1-8B would get for 2x predicted speed at batch 64 on an H100 (config only)
  minitron search --model meta-llama/Llama-3.1-8B --target-speedup 2.0 --at-batch 64 \\
      --gpu h100 --dry-run --out out/search-2x
  # shapes x precisions whose weights (bf16, FP8 or INT4 bytes) plus KV cache fit 6 GiB
  minitron search --model meta-llama/Llama-3.1-8B --target-memory-gb 6 \\
      --schemes bf16,fp8,w4a16 --dry-run --out out/search-6gib
  # half the parameters: 3 candidates distilled for 8k tokens each, the best one pruned
  minitron search --model out/smollm2-135m --calib calib.txt --target-params 0.5 \\
      --candidates 3 --rank-tokens 8192 --out out/smollm2-half"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="choose the pruned shape by search: candidates meeting a "
                                      "params, memory or speedup target, ranked by held-out "
                                      "loss and short distillation", epilog=_EXAMPLE)
    add_input_args(p)
    p.add_argument("--out", required=True,
                   help="output folder: the chosen pruned model (with --dry-run: the "
                        "candidates' report and config-only folders)")
    p.add_argument("--heldout", help="held-out text for the loss (default: 10%% of the --calib "
                                     "documents, kept out of scoring and distillation)")
    p.add_argument("--dry-run", action="store_true",
                   help="only list the candidates with their predictions (reads the config, "
                        "loads no weights)")
    add_settings_args(p, SearchSettings)
    add_device_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..search import search_student
    from ..search.report import markdown

    result = search_student(args.model, args.out, settings_from_args(SearchSettings, args),
                            calib=args.calib, heldout=args.heldout, device=args.device,
                            dtype=args.dtype, dry_run=args.dry_run)
    print(markdown(result.report))
    print(f"wrote {result.out}")
