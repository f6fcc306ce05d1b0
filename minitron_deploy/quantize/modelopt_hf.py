"""FP8 and NVFP4 checkpoints through ModelOpt: fake quantizers calibrated on text, then
ModelOpt's unified Hugging Face checkpoint (``export_hf_checkpoint``), which TensorRT-LLM, vLLM
and SGLang load.

What ModelOpt 0.47 writes: ``hf_quant_config.json`` (``quant_algo`` FP8 or NVFP4, the excluded
modules: lm_head and the embeddings), the same under ``quantization_config`` in config.json
(``quant_method: modelopt``), and beside each quantized linear's weight its scales. FP8:
float8_e4m3fn weights with a per-tensor ``weight_scale`` and a static ``input_scale`` (amax /
448). NVFP4: two FP4 values packed per uint8 byte, FP8 ``weight_scale`` per block of 16, a
float32 ``weight_scale_2`` per tensor and an ``input_scale``. Weights left unquantized are
written in the dtype asked for.

Ranges are calibrated in this process alone: ModelOpt would otherwise all-reduce them over the
default process group whenever one exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.errors import MinitronError

#: ModelOpt's quantization config for each scheme this backend writes.
CONFIGS = {"fp8": "FP8_DEFAULT_CFG", "nvfp4": "NVFP4_DEFAULT_CFG"}


def check_modelopt(scheme: str, device: str) -> None:
    """Refuse, before loading, what cannot be done here: a scheme this backend does not write,
    NVFP4 anywhere but CUDA (its block quantizer is a CUDA kernel), ModelOpt not installed."""
    if scheme not in CONFIGS:
        raise MinitronError(f"format modelopt writes {', '.join(CONFIGS)}, not {scheme}")
    if scheme == "nvfp4" and torch.device(device).type != "cuda":
        raise MinitronError("scheme nvfp4 needs a CUDA device: ModelOpt's NVFP4 quantizer runs "
                            f"on CUDA only (device is {device})")
    try:
        import modelopt.torch.quantization  # noqa: F401
    except ImportError:
        raise MinitronError(f"scheme {scheme} as format modelopt needs ModelOpt: pip install "
                            "'minitron-deploy[modelopt]'") from None


def calibrate(model: nn.Module, scheme: str, batches: Sequence[torch.Tensor]) -> nn.Module:
    """Quantize ``model`` in place with ModelOpt's fake quantizers for ``scheme``, their ranges
    calibrated on ``batches`` of token ids (one forward each)."""
    import modelopt.torch.quantization as mtq

    if not batches:
        raise MinitronError(f"scheme {scheme} calibrates on text: give calibration data")
    config = getattr(mtq, CONFIGS[scheme])
    device = next(model.parameters()).device

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for ids in tqdm(batches, desc=f"calibrating {scheme}", unit="batch"):
                m(input_ids=ids.to(device), use_cache=False)

    model = mtq.quantize(model, {**config, "algorithm": None})
    _calibrate_alone(model)
    return mtq.calibrate(model, config["algorithm"], forward_loop=forward_loop)


def _calibrate_alone(model: nn.Module) -> None:
    """Give every quantized module of ``model`` no data-parallel group (ModelOpt's ``-1``)."""
    from modelopt.torch.quantization.nn import QuantModule
    from modelopt.torch.utils.distributed import ParallelState

    for module in model.modules():
        if isinstance(module, QuantModule):
            module.parallel_state = ParallelState(data_parallel_group=-1)


def _cast_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Every weight of ``model`` in ``dtype``, the calibrated ranges (buffers) untouched:
    ModelOpt casts only the weights it quantizes and writes the others as they are."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
    model.config.dtype = dtype


def write_modelopt(model: nn.Module, tokenizer, out: Path, scheme: str,
                   calib: Sequence[torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> None:
    """Calibrate ``model`` for ``scheme`` ("fp8", "nvfp4") on ``calib`` and write ModelOpt's
    unified HF checkpoint (weights left unquantized in ``dtype``) and the tokenizer to ``out``."""
    from modelopt.torch.export import export_hf_checkpoint

    check_modelopt(scheme, str(next(model.parameters()).device))
    calibrate(model, scheme, calib)
    _cast_weights(model, dtype)
    export_hf_checkpoint(model, dtype=dtype, export_dir=out)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
