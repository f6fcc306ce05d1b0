"""``minitron bench``: output throughput of models (checkpoints or named shapes) per backend."""

from __future__ import annotations

import argparse
import datetime
import shlex
import subprocess
import sys

_EXAMPLE = """example (the paper's comparison: each model at its best batch size):
  minitron bench --models llama31-8b@32 minitron-4b-width@64 out/llama-4.5b@64 \\
      --backend torch,hf --max-throughput --out out/bench"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench",
                       help="throughput of pruned vs unpruned models (torch, hf, vllm, trtllm)",
                       epilog=_EXAMPLE)
    p.add_argument("--models", nargs="+", required=True, metavar="DIR_OR_SHAPE[@B,...]",
                   help="checkpoint dirs or named shapes (llama31-8b, minitron-4b-width, "
                        "minitron-4b-depth; random weights); @B1,B2 sets that model's batches")
    p.add_argument("--backend", default="torch",
                   help="torch, hf, vllm (the vLLM environment's engine; checkpoint dirs "
                        "only) or trtllm; several separated by commas (e.g. torch,hf,vllm)")
    p.add_argument("--isl", type=int, default=512, help="input (prompt) length")
    p.add_argument("--osl", type=int, default=128, help="output length (EOS ignored)")
    p.add_argument("--batch-sizes", default="1,8,32,64",
                   help="batch sizes to time, comma separated (a model's @B1,B2 wins)")
    p.add_argument("--max-throughput", action="store_true",
                   help="compare each model's best batch size (the paper: 8B@32 vs 4B@64)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="weight and compute dtype (default: auto, bf16 on GPUs and on CPUs "
                        "where a matmul probe finds it faster than fp32, else fp32)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--hf-cache", default="static", choices=["static", "dynamic"],
                   help="KV cache of the hf backend's generate")
    p.add_argument("--no-plots", action="store_true", help="skip the throughput plots")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--out", required=True, help="directory for bench.json, bench.md and plots")
    p.set_defaults(func=run)


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _command_line(args: argparse.Namespace) -> str:
    """The equivalent command line (recorded in the report)."""
    words = ["minitron", "bench", "--models", *args.models, "--backend", args.backend,
             "--isl", str(args.isl), "--osl", str(args.osl), "--batch-sizes", args.batch_sizes,
             "--reps", str(args.reps), "--warmup", str(args.warmup), "--dtype", args.dtype]
    if args.max_throughput:
        words.append("--max-throughput")
    return shlex.join(words + ["--out", args.out])


def run(args: argparse.Namespace) -> None:
    from ..bench.api import BenchSettings, benchmark
    from ..bench.models import ModelSpec, parse_batch_sizes
    from ..bench.report import markdown, write_report

    settings = BenchSettings(
        models=[ModelSpec.parse(m) for m in args.models],
        backends=[b.strip() for b in args.backend.split(",") if b.strip()],
        isl=args.isl, osl=args.osl, batch_sizes=parse_batch_sizes(args.batch_sizes),
        reps=args.reps, warmup=args.warmup, dtype=args.dtype, device=args.device,
        hf_cache=args.hf_cache, max_throughput=args.max_throughput, seed=args.seed)
    report = benchmark(settings, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    report["meta"] = {"command": _command_line(args), "commit": _commit(),
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for path in write_report(report, args.out, plots=not args.no_plots):
        print(path)
    print(markdown(report))
