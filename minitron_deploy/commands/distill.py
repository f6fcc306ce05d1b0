"""``minitron distill``: knowledge-distillation retraining of a pruned student."""

from __future__ import annotations

import argparse

from ..distill.api import DistillConfig
from .common import add_settings_args, settings_from_args

_EXAMPLE = """example (2M tokens of forward-KL from the teacher into a pruned student):
  minitron distill --teacher meta-llama/Llama-3.1-8B --student out/llama-4.5b \\
      --data train.jsonl --tokens 2e6 --seq-len 1024 --out out/llama-4.5b-kd
quantization-aware (the output is the int8-w8a8 checkpoint, as minitron quantize writes it):
  minitron distill ... --quantize int8-w8a8 --out out/llama-4.5b-int8"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="retrain a pruned student from its teacher (forward KL)",
                       description="Forward-KL distillation on local text. Multi-GPU: launch "
                                   "with `torchrun --nproc-per-node N -m minitron_deploy.cli "
                                   "distill ...` (DDP or FSDP2, see --strategy).",
                       epilog=_EXAMPLE)
    p.add_argument("--teacher", required=True,
                   help="teacher checkpoint folder, or Hugging Face Hub id org/name[@rev]")
    p.add_argument("--student", required=True,
                   help="student (pruned) checkpoint folder, or Hub id org/name[@rev]")
    p.add_argument("--data", required=True, help="training text: save_to_disk folder, "
                                                 ".txt/.jsonl/.parquet file, or a folder")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    add_settings_args(p, DistillConfig)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..distill.api import distill

    config = settings_from_args(DistillConfig, args)
    report = distill(args.teacher, args.student, args.data, args.out, config, resume=args.resume)
    what = f" ({config.quantize}, trained through its fake quantizers)" if config.quantize else ""
    print(f"distilled {report.steps} steps ({report.tokens:,} tokens) in {report.seconds:.0f} s: "
          f"loss {report.first_loss:.4f} -> {report.last_loss:.4f}; wrote {report.out}{what}")
