"""``minitron serve``: an OpenAI-compatible server (vLLM) for a checkpoint."""

from __future__ import annotations

import argparse

_EXAMPLE = """example:
  minitron serve --model out/pruned --dtype fp32 --max-model-len 2048
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "pruned", "prompt": "The capital of France is", "max_tokens": 16}'"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a checkpoint with vLLM's OpenAI-compatible server",
                       description="Start vLLM's OpenAI-compatible server for a checkpoint, "
                                   "with its own chat template\n(from the vLLM environment "
                                   ".ci/setup builds, or $MINITRON_VLLM_PYTHON); clients name "
                                   "the model\nafter its folder.",
                       epilog=_EXAMPLE)
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="checkpoint folder (e.g. from minitron prune or distill) or Hugging "
                        "Face Hub id org/name[@rev]")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="weight and compute dtype (default: auto, bf16 on GPUs and on CPUs "
                        "where a matmul probe finds it faster than fp32, else fp32; passed "
                        "to vLLM explicitly)")
    p.add_argument("--max-model-len", type=int, default=None, metavar="N",
                   help="longest prompt + output in tokens (default: the model's "
                        "max_position_embeddings)")
    p.add_argument("--cpu-kv-cache-gib", type=int, default=4, metavar="GIB",
                   help="KV cache size on vLLM's CPU build (default: 4; ignored on GPUs; "
                        "$VLLM_CPU_KVCACHE_SPACE wins when set)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..serve.server import ServeSettings, serve

    serve(ServeSettings(model=args.model, host=args.host, port=args.port, dtype=args.dtype,
                        max_model_len=args.max_model_len, cpu_kv_cache_gib=args.cpu_kv_cache_gib))
