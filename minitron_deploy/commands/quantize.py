"""``minitron quantize``: a checkpoint as a quantized one that serving engines load."""

from __future__ import annotations

import argparse

from .common import add_settings_args, settings_from_args

_EXAMPLE = """example (the pruned, distilled student as FP8 for vLLM, then NVFP4 for TensorRT-LLM):
  minitron quantize --model out/llama-4.5b-kd --scheme fp8 --out out/llama-4.5b-fp8
  minitron quantize --model out/llama-4.5b-kd --scheme nvfp4 --calib calib.jsonl \\
      --device cuda --out out/llama-4.5b-nvfp4"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..quantize.settings import QuantizeSettings

    p = sub.add_parser("quantize", help="quantize a checkpoint (fp8, fp8-block, int8-w8a8, "
                       "w4a16, nvfp4, gguf) for serving", epilog=_EXAMPLE)
    p.add_argument("--model", required=True,
                   help="checkpoint folder, or Hugging Face Hub id org/name[@rev]")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--calib", help="calibration text, same formats as prune --calib (no default: "
                                   "schemes that calibrate need it, the others ignore it)")
    add_settings_args(p, QuantizeSettings)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..quantize.api import quantize
    from ..quantize.settings import QuantizeSettings

    report = quantize(args.model, args.out, settings_from_args(QuantizeSettings, args),
                      calib=args.calib)
    ratio = report.bytes_before / max(report.bytes_after, 1)
    print(f"wrote {report.scheme} ({report.format}) to {report.out_dir}: weights "
          f"{report.bytes_before / 1e6:.1f} MB -> {report.bytes_after / 1e6:.1f} MB "
          f"({ratio:.2f}x smaller), record minitron/quantize.json")
