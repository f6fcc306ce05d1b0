"""``minitron prune``: score importance and trim a checkpoint to a target shape."""

from __future__ import annotations

import argparse

from ..align import Alignment
from ..target import TargetSpec, parse_layer_ranges
from ..trim import RESCALE_CHOICES
from .common import add_calibration_args, checked, scoring_settings

_EXAMPLE = """example (Llama-3.1-8B to a 4.5B width-pruned model, scores kept for reuse):
  minitron prune --model meta-llama/Llama-3.1-8B --calib calib.jsonl \\
      --target-params 4.5e9 --out out/llama-4.5b
  minitron prune --model meta-llama/Llama-3.1-8B --scores out/llama-4.5b \\
      --drop-layers 16-31 --out out/llama-depth"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="score importance and trim a checkpoint to a target shape",
                       epilog=_EXAMPLE)
    add_calibration_args(p)
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--scores", help="reuse scores instead of calibrating: a scores file or a "
                                    "folder pruned before (its minitron/importance.safetensors; "
                                    "default: calibrate on --calib)")
    keep = "(default: the source's, or what --target-params picks)"
    p.add_argument("--hidden-size", type=int, help=f"target hidden size {keep}")
    p.add_argument("--ffn-hidden-size", type=int, help=f"target MLP intermediate size {keep}")
    p.add_argument("--num-heads", type=int, help=f"target query heads {keep}")
    p.add_argument("--num-kv-heads", type=int, help=f"target KV heads {keep}")
    p.add_argument("--num-layers", type=int,
                   help="target layer count, layers chosen by --depth-metric (default: all kept)")
    p.add_argument("--drop-layers", type=checked(parse_layer_ranges),
                   help="layers to remove, e.g. 16-31 or 3,5,10-12 (default: none)")
    p.add_argument("--target-params", type=float,
                   help="parameter budget: absolute (4.5e9) or a fraction of the source (0.5); "
                        "default: the explicit sizes only")
    default = Alignment()
    p.add_argument("--align", default=f"{default.hidden},{default.ffn},{default.heads}",
                   metavar="HIDDEN,FFN[,HEADS]",
                   help="multiples the budget rule keeps the hidden size, FFN size and head "
                        "counts at (default %(default)s: FP8 and Marlin kernels stay usable; a "
                        "source that is not a multiple gets the largest power of two dividing "
                        "it; 1,1 turns it off); explicit sizes off it warn")
    p.add_argument("--rescale-norms", choices=list(RESCALE_CHOICES), default="auto",
                   help="scale RMSNorm weights by sqrt(H_old/H_new) after hidden pruning "
                        "(auto: on for RMSNorm families, off for LayerNorm)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..prune import prune
    from ..report import print_prune_summary

    spec = TargetSpec(hidden_size=args.hidden_size, ffn_hidden_size=args.ffn_hidden_size,
                      num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                      num_layers=args.num_layers, drop_layers=args.drop_layers,
                      target_params=args.target_params, align=Alignment.parse(args.align))
    report = prune(args.model, args.out, spec, calib=args.calib, scores_path=args.scores,
                   settings=scoring_settings(args), calib_samples=args.calib_samples,
                   seq_len=args.seq_len, batch_size=args.batch_size, task=args.task,
                   task_limit=args.task_limit, device=args.device, dtype=args.dtype,
                   rescale_norms=RESCALE_CHOICES[args.rescale_norms],
                   seed=args.seed, offload=args.offload)
    print_prune_summary(report)
