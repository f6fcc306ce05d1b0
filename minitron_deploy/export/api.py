"""``export``: one call from a Hugging Face checkpoint directory to a deployable artifact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..arch.modeling import DTYPES, check_output_dir, load_config, load_model
from ..core.errors import MinitronError
from ..core.hub import resolve_model
from ..core.precision import resolve_device
from ..core.quantized import Quantization, read_quantization
from ..core.shape import ModelShape
from ..data.text import check_texts
from .output import atomic_dir, write_manifest

FORMATS = ("hf", "trtllm", "onnx")
EXPORT_DTYPES = ("bf16", "fp16", "fp32", "fp8")
#: The dtype of each format when none is asked for (ONNX export is float32 only).
DEFAULT_DTYPES = {"hf": "bf16", "trtllm": "bf16", "onnx": "fp32"}
_TRTLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "bfloat16"}
#: FP8 GEMMs (cuBLASLt, TensorRT-LLM's FP8 kernels) need every GEMM dimension aligned to 16.
FP8_ALIGNMENT = 16


@dataclass
class ExportResult:
    out_dir: Path
    format: str
    dtype: str
    manifest: dict


@dataclass
class CalibrationSettings:
    """Text and sizes for FP8 calibration (any ``--calib`` source ``minitron prune`` takes;
    a table is read from ``text_column``, a DatasetDict folder from ``split``)."""

    source: str | Path | None = None
    num_samples: int = 128
    seq_len: int = 256
    batch_size: int = 8
    seed: int = 0
    text_column: str = "text"
    split: str = "train"


def check_request(fmt: str, dtype: str, tp: int) -> None:
    """Refuse unknown formats/dtypes and combinations no backend takes, before any loading."""
    if fmt not in FORMATS:
        raise MinitronError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if dtype not in EXPORT_DTYPES:
        raise MinitronError(f"unknown dtype {dtype!r}; choose from {', '.join(EXPORT_DTYPES)}")
    if tp < 1:
        raise MinitronError(f"--tp must be at least 1, got {tp}")
    if tp > 1 and fmt != "trtllm":
        raise MinitronError("--tp applies to --format trtllm only (HF and ONNX are unsharded)")
    if fmt == "onnx" and dtype in ("fp8", "bf16", "fp16"):
        raise MinitronError(f"ONNX export is float32 only (got --dtype {dtype})")


def check_fp8_shape(shape: ModelShape, tp: int) -> None:
    """Refuse shapes whose per-rank FP8 GEMMs would be misaligned."""
    dims = {"hidden_size": shape.hidden_size, "ffn_hidden_size / tp": shape.ffn_hidden_size // tp,
            "attention width / tp": shape.num_heads * shape.head_dim // tp,
            "kv width / tp": shape.num_kv_heads * shape.head_dim // tp}
    bad = {k: v for k, v in dims.items() if v % FP8_ALIGNMENT}
    if bad:
        name, value = next(iter(bad.items()))
        raise MinitronError(f"FP8 needs GEMM sizes divisible by {FP8_ALIGNMENT}; {name} is {value}")


def _fp8_batches(tokenizer, calib: CalibrationSettings) -> list[torch.Tensor]:
    from ..data.text import calibration_batches

    if tokenizer is None:
        raise MinitronError("--dtype fp8 calibrates on text and needs the model's tokenizer")
    return calibration_batches(calib.source, tokenizer, calib.num_samples, calib.seq_len,
                               calib.batch_size, calib.seed, calib.text_column, calib.split)


def export(model_dir: str | Path, out_dir: str | Path, format: str = "hf",
           dtype: str | None = None, tp: int = 1, calib: CalibrationSettings | None = None,
           device: str = "auto") -> ExportResult:
    """Export the checkpoint at ``model_dir`` to ``out_dir`` as ``format`` ("hf", "trtllm",
    "onnx") in ``dtype`` ("bf16", "fp16", "fp32", "fp8"; None: the format's
    ``DEFAULT_DTYPES``) on ``device`` ("auto": CUDA when a GPU is visible, else the CPU).
    FP8 is calibrated on ``calib``.

    Written atomically with ``minitron/export_manifest.json`` (source, format, dtype, shape,
    sha256 of every file); any error leaves nothing behind.
    """
    dtype = dtype or DEFAULT_DTYPES.get(format)
    check_request(format, dtype, tp)
    device = resolve_device(device)
    model_dir = resolve_model(model_dir)
    calib = calib or CalibrationSettings()
    check_output_dir(out_dir, model_dir)
    quant = read_quantization(model_dir)
    if quant is not None:
        return _export_quantized(model_dir, out_dir, quant, format, dtype, tp)
    config = load_config(model_dir)
    shape = ModelShape.from_config(config)
    if format == "trtllm":
        from .shard import check_tp
        from .trtllm import trtllm_config

        trtllm_config(config, "bfloat16", tp, False)  # what the converter refuses, before loading
        check_tp({"num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
                  "intermediate_size": shape.ffn_hidden_size}, tp)
    if dtype == "fp8":
        check_fp8_shape(shape, tp)
        if calib.source is None:
            raise MinitronError("--dtype fp8 needs calibration text: pass --calib DATA")
        check_texts(calib.source, calib.text_column, calib.split)
    load_dtype = "fp32" if dtype in ("fp8", "fp32") or format != "hf" else dtype
    model, tokenizer = load_model(model_dir, dtype=load_dtype, device=device)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise MinitronError(f"non-finite weights (NaN/Inf) in {name}; refusing to export")
    batches = _fp8_batches(tokenizer, calib) if dtype == "fp8" else None
    extra: dict = {}
    with atomic_dir(out_dir, model_dir) as tmp:
        if format == "hf":
            from .fp8 import calibrate_fp8
            from .hf import write_hf, write_hf_fp8

            if batches is not None:
                calibrate_fp8(model, batches)
                write_hf_fp8(model, tokenizer, tmp, torch.bfloat16)
            else:
                write_hf(model, tokenizer, tmp, DTYPES[dtype])
        elif format == "trtllm":
            from .trtllm import write_trtllm

            write_trtllm(model, tmp, _TRTLLM_DTYPES[dtype], tp, fp8_batches=batches)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            extra["tp"] = tp
        else:
            from .onnx import write_onnx

            write_onnx(model, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        if batches is not None:
            extra["calibration"] = {"source": str(calib.source),
                                    "samples": sum(len(b) for b in batches),
                                    "seq_len": int(batches[0].shape[1])}
        manifest = write_manifest(tmp, model_dir, format, dtype, shape.as_dict(), extra)
    return ExportResult(Path(out_dir).resolve(), format, dtype, manifest)


def _export_quantized(model_dir: Path, out_dir: str | Path, quant: Quantization, fmt: str,
                      dtype: str, tp: int) -> ExportResult:
    """A quantized checkpoint as a TensorRT-LLM FP8 checkpoint, its FP8 weights and scales
    unchanged (see ``quantized.py``); ``dtype`` is that of the tensors left unquantized
    (``fp8``: bf16). The manifest's dtype is ``fp8``."""
    from transformers import AutoTokenizer

    from .quantized import check_quantized, load_fp8_student
    from .shard import check_tp
    from .trtllm import trtllm_config, write_trtllm

    check_quantized(quant, fmt)
    config = load_config(model_dir)
    shape = ModelShape.from_config(config)
    trtllm_config(config, "bfloat16", tp, False)
    check_tp({"num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
              "intermediate_size": shape.ffn_hidden_size}, tp)
    check_fp8_shape(shape, tp)
    model, scales = load_fp8_student(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError):
        tokenizer = None
    with atomic_dir(out_dir, model_dir) as tmp:
        write_trtllm(model, tmp, _TRTLLM_DTYPES[dtype], tp, row_scales=scales)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        manifest = write_manifest(tmp, model_dir, fmt, "fp8", shape.as_dict(),
                                  {"tp": tp, "quantized_source": quant.label})
    return ExportResult(Path(out_dir).resolve(), fmt, "fp8", manifest)
