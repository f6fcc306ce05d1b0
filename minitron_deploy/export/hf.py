"""Hugging Face export: a stock checkpoint in the chosen dtype, or ModelOpt's FP8 checkpoint.

The FP8 form is ModelOpt's unified HF export (``export_hf_checkpoint``): FP8 weights with
``weight_scale``/``input_scale`` per linear and ``quantization_config`` (``quant_method:
modelopt``) in config.json, which TensorRT-LLM's PyTorch backend (``trtllm-serve``, LLM API)
loads directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def write_hf(model: nn.Module, tokenizer, directory: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` in ``dtype`` (safetensors) plus the tokenizer."""
    model.to(dtype).save_pretrained(str(directory), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def write_hf_fp8(model: nn.Module, tokenizer, directory: Path, dtype: torch.dtype) -> None:
    """ModelOpt's FP8 HF checkpoint of a calibrated model (unquantized tensors in ``dtype``)."""
    from modelopt.torch.export import export_hf_checkpoint

    if not model.config.architectures:  # ModelOpt reads it; models built from a config lack it
        model.config.architectures = [type(model).__name__]
    export_hf_checkpoint(model, dtype=dtype, export_dir=str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
