"""``minitron distill``: knowledge-distillation retraining of a pruned student."""

from __future__ import annotations

import argparse

from ..distill.api import DistillConfig
from ..distill.parallel import STRATEGIES


_EXAMPLE = """example (2M tokens of forward-KL from the teacher into a pruned student):
  minitron distill --teacher meta-llama/Llama-3.1-8B --student out/llama-4.5b \\
      --data train.jsonl --tokens 2e6 --seq-len 1024 --out out/llama-4.5b-kd"""


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
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", type=float, help="training tokens, e.g. 2e6 (this or --steps)")
    budget.add_argument("--steps", type=int, help="optimizer steps (this or --tokens)")
    d = DistillConfig()
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per training sequence")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per device micro-batch")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help="final learning rate of the cosine decay, as a share of --lr")
    p.add_argument("--warmup-steps", type=int,
                   help="linear warmup steps (default: 5%% of the steps)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                   help="gradient clipping norm")
    p.add_argument("--kd-temperature", type=float, default=d.kd_temperature,
                   help="softmax temperature of teacher and student in the KL")
    p.add_argument("--lm-loss-weight", type=float, default=d.lm_loss_weight,
                   help="mix of plain LM loss: 0 = pure KD, 1 = LM only (no teacher)")
    p.add_argument("--intermediate-loss", choices=["cosine", "mse"],
                   help="also match hidden states at mapped layers (default: logits only)")
    p.add_argument("--intermediate-weight", type=float, default=d.intermediate_weight,
                   help="weight of the hidden-state loss")
    p.add_argument("--intermediate-layers", type=int, default=d.intermediate_layers,
                   help="how many evenly spaced layers to match (the last one included)")
    p.add_argument("--teacher-correction-steps", type=int, default=0,
                   help="fine-tune the teacher on the data this many steps before KD")
    p.add_argument("--teacher-correction-lr", type=float, default=d.teacher_correction_lr,
                   help="learning rate of the teacher fine-tuning")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="optimizer steps between resumable checkpoints")
    p.add_argument("--chunk-tokens", type=int, default=d.chunk_tokens,
                   help="tokens per chunk of the KL computation (memory vs speed)")
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=d.precision,
                   help="auto (default): bf16 autocast where it is faster (GPUs; CPUs "
                        "measured once, e.g. with AMX), else fp32")
    p.add_argument("--strategy", choices=list(STRATEGIES), default=d.strategy,
                   help="single process, DDP or FSDP2 under torchrun (default auto: the memory "
                        "planner's choice: DDP where replicas fit, else FSDP)")
    p.add_argument("--teacher-sharding", choices=["auto", "shard", "replicate"],
                   default=d.teacher_sharding,
                   help="FSDP only: shard the frozen teacher for forward or replicate it on "
                        "every rank (default auto: replicate where it fits)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each decoder layer in the backward pass: less activation "
                        "memory for about 30%% more compute (default off)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="hold out this share of documents; distill.json reports their loss "
                        "before and after training")
    p.add_argument("--val-sequences", type=int, default=d.val_sequences,
                   help="held-out sequences evaluated when --val-fraction is set")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the data order and the held-out split")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..distill.api import distill

    keys = set(DistillConfig.__dataclass_fields__) - {"tokens"}
    config = DistillConfig(tokens=int(args.tokens) if args.tokens else None,
                           **{k: getattr(args, k) for k in keys})
    report = distill(args.teacher, args.student, args.data, args.out, config, resume=args.resume)
    print(f"distilled {report.steps} steps ({report.tokens:,} tokens) in {report.seconds:.0f} s: "
          f"loss {report.first_loss:.4f} -> {report.last_loss:.4f}; wrote {report.out}")
