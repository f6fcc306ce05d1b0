"""``minitron build-engine``: TensorRT engine from a TensorRT-LLM checkpoint (<= 1.2.x)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engine",
                       help="build a TensorRT-LLM engine (or print the PyTorch-backend serve "
                            "command on TensorRT-LLM > 1.2)",
                       epilog="example (inside the TensorRT-LLM container):\n"
                              "  minitron build-engine --checkpoint out/llama-4.5b-trtllm "
                              "--out out/engine --max-batch-size 32")
    p.add_argument("--checkpoint", required=True,
                   help="TensorRT-LLM checkpoint from `minitron export --format trtllm`")
    p.add_argument("--out", required=True, help="engine directory (must not exist or be empty)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="largest batch the engine serves")
    p.add_argument("--max-input-len", type=int, default=1024, help="longest prompt in tokens")
    p.add_argument("--max-seq-len", type=int, default=2048,
                   help="longest prompt + output in tokens")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..export.engine import EngineLimits, build_engine

    result = build_engine(args.checkpoint, args.out,
                          EngineLimits(args.max_batch_size, args.max_input_len, args.max_seq_len))
    print(result.message)
