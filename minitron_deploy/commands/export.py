"""``minitron export``: a checkpoint as Hugging Face, TensorRT-LLM checkpoint or ONNX."""

from __future__ import annotations

import argparse

from ..core.precision import check_device
from ..data.text import TextSettings
from .common import DEVICE_HELP, add_settings_args

_EXAMPLE = """example (an FP8 TensorRT-LLM checkpoint on 2 tensor-parallel ranks):
  minitron export --model out/llama-4.5b-kd --format trtllm --dtype fp8 --tp 2 \\
      --calib calib.jsonl --device cuda --out out/llama-4.5b-trtllm-fp8"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..export import DEFAULT_DTYPES, EXPORT_DTYPES, FORMATS

    p = sub.add_parser("export", help="export a checkpoint (hf, trtllm, onnx; bf16/fp16/fp32/fp8)",
                       epilog=_EXAMPLE)
    p.add_argument("--model", required=True,
                   help="checkpoint folder, or Hugging Face Hub id org/name[@rev]")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="hf: safetensors checkpoint, trtllm: TensorRT-LLM checkpoint, onnx: "
                        "one float32 graph")
    defaults = ", ".join(f"{v} for {k}" for k, v in DEFAULT_DTYPES.items())
    p.add_argument("--dtype", choices=EXPORT_DTYPES,
                   help=f"weight dtype (default: {defaults}); fp8: ModelOpt FP8 weights and "
                        "activations, calibrated on --calib")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (trtllm only)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--calib", help="calibration text for fp8, same formats as prune --calib "
                                   "(no default: fp8 needs it)")
    add_settings_args(p, TextSettings)
    p.add_argument("--calib-samples", type=int, default=128, help="fp8 calibration sequences")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sequence")
    p.add_argument("--batch-size", type=int, default=8, help="calibration sequences per forward")
    p.add_argument("--device", default="auto", type=check_device,
                   help=f"{DEVICE_HELP}: where the model is loaded and FP8 calibrated")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..export import CalibrationSettings, export

    calib = CalibrationSettings(source=args.calib, num_samples=args.calib_samples,
                                seq_len=args.seq_len, batch_size=args.batch_size,
                                text_column=args.text_column, split=args.split)
    result = export(args.model, args.out, format=args.format, dtype=args.dtype, tp=args.tp,
                    calib=calib, device=args.device)
    files = result.manifest["files"]
    print(f"wrote {result.format} ({result.dtype}) to {result.out_dir}: {len(files)} files, "
          f"manifest minitron/export_manifest.json")
