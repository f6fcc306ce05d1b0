"""FP8 (E4M3) post-training quantization with ModelOpt, and the per-tensor scales it yields.

``calibrate_fp8`` inserts ModelOpt's fake quantizers (``FP8_DEFAULT_CFG``: per-tensor FP8
weights and activations, the paper's deployment setting) and calibrates activation ranges on
real batches, in this process alone (ModelOpt would otherwise all-reduce the ranges over the
default process group whenever one exists, waiting for ranks that are not calibrating).
``quantize_linear`` turns one TensorRT-LLM linear (possibly several fused HF
linears) into FP8 weights plus ``weights_scaling_factor`` and ``activation_scaling_factor``,
with ModelOpt's convention: scale = amax / 448, fused linears share the max of their amaxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import MinitronError

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def calibrate_fp8(model: nn.Module, batches: Sequence[torch.Tensor]) -> nn.Module:
    """Quantize ``model`` in place with ModelOpt FP8 fake quantizers calibrated on ``batches``."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError:
        raise MinitronError("--dtype fp8 needs ModelOpt: pip install 'minitron-deploy[modelopt]'")
    if not batches:
        raise MinitronError("FP8 calibration needs at least one batch of calibration text")

    def forward_loop(m: nn.Module) -> None:
        device = next(m.parameters()).device
        with torch.no_grad():
            for ids in batches:
                m(input_ids=ids.to(device), use_cache=False)

    model = mtq.quantize(model, {**mtq.FP8_DEFAULT_CFG, "algorithm": None})
    _sync_with_no_one(model)
    return mtq.calibrate(model, mtq.FP8_DEFAULT_CFG["algorithm"], forward_loop=forward_loop)


def _sync_with_no_one(model: nn.Module) -> None:
    """Give every quantized module of ``model`` no data-parallel group (ModelOpt's ``-1``):
    its calibration ranges stay this process's own."""
    from modelopt.torch.quantization.nn import QuantModule
    from modelopt.torch.utils.distributed import ParallelState

    for module in model.modules():
        if isinstance(module, QuantModule):
            module.parallel_state = ParallelState(data_parallel_group=-1)


def owner(scope: nn.Module, weight: torch.Tensor) -> nn.Module:
    """The quantized linear in ``scope`` whose weight storage holds ``weight`` (fused layouts
    hand out views of one fused weight)."""
    ptr = weight.untyped_storage().data_ptr()
    for module in scope.modules():
        if hasattr(module, "weight_quantizer") and \
                module.weight.untyped_storage().data_ptr() == ptr:
            return module
    raise MinitronError("a linear layer has no FP8 quantizer; was the model calibrated?")


def _amax(quantizer) -> torch.Tensor:
    amax = getattr(quantizer, "amax", None)
    if amax is None or amax.numel() != 1 or not getattr(quantizer, "is_enabled", True):
        raise MinitronError("FP8 export needs calibrated per-tensor quantizers")
    return amax.detach().float().reshape(())


def group_scales(modules: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights_scaling_factor, activation_scaling_factor)`` shared by ``modules``, shape (1,)."""
    w = torch.stack([_amax(m.weight_quantizer) for m in modules]).max()
    a = torch.stack([_amax(m.input_quantizer) for m in modules]).max()
    return (w / FP8_MAX).reshape(1), (a / FP8_MAX).reshape(1)


def to_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``weight / scale`` rounded to float8_e4m3fn."""
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What an FP8 GEMM sees of ``x``: quantized with ``scale`` and dequantized."""
    return to_fp8(x, scale).float() * scale
