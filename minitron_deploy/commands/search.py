"""``minitron search``: choose the student shape by search under a params, memory or speedup
target."""

from __future__ import annotations

import argparse

from ..align import Alignment
from ..bench.hardware import GPU_LIMITS
from ..errors import MinitronError
from .common import add_calibration_args, checked, scoring_settings

_EXAMPLE = """examples:
  # the shapes Llama-3.1-8B would get for 2x predicted speed at batch 64 on an H100 (config only)
  minitron search --model meta-llama/Llama-3.1-8B --target-speedup 2.0 --at-batch 64 \\
      --gpu h100 --dry-run --out out/search-2x
  # half the parameters: 3 candidates distilled for 8k tokens each, the best one pruned
  minitron search --model out/smollm2-135m --calib calib.txt --target-params 0.5 \\
      --candidates 3 --rank-tokens 8192 --out out/smollm2-half"""


def _steps(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise MinitronError(f"cannot parse steps {text!r}; use HIDDEN,FFN,LAYERS, e.g. 256,512,2")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="choose the pruned shape by search: candidates meeting a "
                                      "params, memory or speedup target, ranked by held-out "
                                      "loss and short distillation", epilog=_EXAMPLE)
    add_calibration_args(p)
    p.add_argument("--out", required=True,
                   help="output folder: the chosen pruned model (with --dry-run: the "
                        "candidates' report and config-only folders)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-params", type=float,
                        help="parameter budget: absolute (4.5e9) or a fraction (0.5)")
    target.add_argument("--target-memory-gb", type=float,
                        help="GiB of weights plus the KV cache of --at-batch sequences of "
                             "--isl + --osl tokens")
    target.add_argument("--target-speedup", type=float,
                        help="predicted speedup over the source at --at-batch on --gpu "
                             "(needs --at-batch)")
    p.add_argument("--at-batch", type=int,
                   help="batch size of the memory and speedup predictions (default: 1; "
                        "required with --target-speedup)")
    p.add_argument("--isl", type=int, default=512, help="prompt length of the predictions")
    p.add_argument("--osl", type=int, default=128, help="output length of the predictions")
    p.add_argument("--gpu", choices=list(GPU_LIMITS), default="h100",
                   help="GPU whose recorded copy bandwidth and bf16 matmul rate the speedup "
                        "prediction uses")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="candidates lie within this fraction below the params/memory target "
                        "or above the speedup target")
    p.add_argument("--max-width-prune", type=float, default=0.4,
                   help="most pruning of hidden size, FFN size and heads per KV group")
    p.add_argument("--max-depth-prune", type=float, default=0.2, help="most pruning of layers")
    p.add_argument("--steps", type=checked(_steps), metavar="HIDDEN,FFN,LAYERS",
                   help="grid steps (default: hidden 256, FFN 512, 2 layers at 8B scale, "
                        "smaller for smaller models; multiples of --align)")
    default = Alignment()
    p.add_argument("--align", default=f"{default.hidden},{default.ffn},{default.heads}",
                   metavar="HIDDEN,FFN[,HEADS]", help="multiples every candidate size keeps")
    p.add_argument("--max-candidates", type=int, default=32,
                   help="candidates evaluated after pruning, closest to the target first")
    p.add_argument("--candidates", type=int, default=3,
                   help="K: candidates with the lowest loss after pruning that get the short "
                        "distillation")
    p.add_argument("--rank-by", default="kd",
                   help="loss (right after pruning), kd (loss after --rank-tokens of "
                        "distillation) or task:NAME (its accuracy after the distillation)")
    p.add_argument("--rank-tokens", type=int, default=8192,
                   help="distillation tokens per ranked candidate")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the short distillation")
    p.add_argument("--heldout", help="held-out text for the loss (default: 10%% of the --calib "
                                     "documents, kept out of scoring and distillation)")
    p.add_argument("--heldout-seqs", type=int, default=32, help="held-out sequences of --seq-len")
    p.add_argument("--scores", help="reuse a scores file or pruned folder instead of "
                                    "calibrating (default: calibrate once on --calib)")
    p.add_argument("--dry-run", action="store_true",
                   help="only list the candidates with their predictions (reads the config, "
                        "loads no weights)")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """SearchSettings from the parsed arguments."""
    from ..distill.api import DistillConfig
    from ..search import Bounds, Deployment, Goal, SearchSettings

    if args.target_params is not None:
        goal = Goal("params", args.target_params, args.tolerance)
    elif args.target_memory_gb is not None:
        goal = Goal("memory", args.target_memory_gb, args.tolerance)
    else:
        if args.at_batch is None:
            raise MinitronError("--target-speedup needs --at-batch: the speedup depends on it")
        goal = Goal("speedup", args.target_speedup, args.tolerance)
    hidden, ffn, layers = args.steps or (None, None, None)
    return SearchSettings(
        goal=goal, deployment=Deployment(args.gpu, args.at_batch or 1, args.isl, args.osl),
        bounds=Bounds(args.max_width_prune, args.max_depth_prune, hidden, ffn, layers),
        align=Alignment.parse(args.align), max_candidates=args.max_candidates,
        top_k=args.candidates, rank_by=args.rank_by, rank_tokens=args.rank_tokens,
        task_limit=args.task_limit, distill=DistillConfig(lr=args.lr, batch_size=args.batch_size),
        scoring=scoring_settings(args), calib_samples=args.calib_samples, seq_len=args.seq_len,
        batch_size=args.batch_size, heldout_seqs=args.heldout_seqs, device=args.device,
        dtype=args.dtype)


def run(args: argparse.Namespace) -> None:
    from ..search import search_student
    from ..search.report import markdown

    result = search_student(args.model, args.out, settings_from_args(args), calib=args.calib,
                            heldout=args.heldout, scores=args.scores, dry_run=args.dry_run)
    print(markdown(result.report))
    print(f"wrote {result.out}")
