"""``minitron eval``: perplexity and zero-shot multiple-choice accuracy."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.text import TextSettings
from ..eval.tasks import TASKS
from .common import add_device_args, add_settings_args

_EXAMPLE = """example (teacher and student side by side on 200 items per task):
  minitron eval --model meta-llama/Llama-3.1-8B --model out/llama-4.5b-kd \\
      --tasks ppl,hellaswag,arc_easy --ppl-data heldout.txt --limit 200 --out results.json"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy (lm-eval scoring)",
                       epilog=_EXAMPLE)
    p.add_argument("--model", required=True, action="append",
                   help="checkpoint folder or Hub id org/name[@rev]; repeat for a "
                        "side-by-side table")
    p.add_argument("--tasks", default="ppl,hellaswag,piqa,arc_easy,arc_challenge,winogrande",
                   help=f"comma separated: ppl, {', '.join(TASKS)}")
    p.add_argument("--limit", type=int,
                   help="items per task, MMLU: per subject (default: every item)")
    p.add_argument("--ppl-data", help="held-out text for perplexity, same formats as prune "
                                      "--calib (no default: needed for the ppl task)")
    add_settings_args(p, TextSettings)
    p.add_argument("--seq-len", type=int, default=512, help="perplexity sequence length")
    p.add_argument("--ppl-seqs", type=int, default=64, help="perplexity sequences")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    add_device_args(p)
    p.add_argument("--out", required=True, help="results JSON (a .md table is written beside)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..arch.modeling import check_not_inside, check_writable_parent
    from ..eval.api import evaluate, markdown_table, parse_tasks, write_results

    tasks = parse_tasks(args.tasks)
    check_not_inside(args.out, *args.model)  # before any work: fail fast, inputs untouched
    check_writable_parent(args.out)
    names = [Path(m).name for m in args.model]
    if len(set(names)) < len(names):  # same folder names: label columns by full path
        names = list(args.model)
    results = {name: evaluate(m, tasks, args.limit, args.ppl_data, args.seq_len, args.ppl_seqs,
                              args.device, args.dtype, args.batch_size, args.text_column,
                              args.split)
               for name, m in zip(names, args.model)}
    write_results(results, args.out, meta={"models": args.model, "tasks": tasks,
                                           "limit": args.limit, "ppl_data": args.ppl_data})
    print(markdown_table(results), end="")
