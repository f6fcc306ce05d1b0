"""FP8 linears for the torch fast path: compressed-tensors ``fp8`` (FP8_DYNAMIC) as vLLM runs it.

Weights are FP8 E4M3 per output channel (``weight`` ``[out, in]`` float8_e4m3fn and
``weight_scale`` ``[out, 1]``, as ``minitron quantize --scheme fp8`` writes them); activations
are quantized per token at run time (scale: the token's absolute max / 448, in float32); the
product is ``torch._scaled_mm`` with row-wise scales (CUTLASS or cuBLASLt FP8 GEMM on CUDA
sm_89+, torch's reference kernel on CPU), output in the model's dtype. ``lm_head`` stays 16-bit.

A model enters the fast path in FP8 as an ordinary transformers model whose quantized linears
hold their FP8 ``weight`` and a ``weight_scale``: :func:`load_fp8_checkpoint` reads a folder's
FP8 tensors as stored (never dequantized); :func:`quantize_fp8` rounds a 16-bit model in memory
exactly as the written checkpoint would hold it. The engine fuses the FP8 matrices as it fuses
16-bit ones (:func:`fused`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import MinitronError
from ..core.quantized import COMPRESSED, read_quantization

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
#: Linears the ``fp8`` scheme leaves 16-bit (as ``quantize.compressed`` writes it).
IGNORED = ("lm_head",)
#: ``torch._scaled_mm`` on CUDA needs the inner and output dimensions in multiples of this.
GEMM_MULTIPLE = 16


class Fp8Weight(NamedTuple):
    """One (possibly fused) FP8 matrix: ``weight`` ``[N, K]`` float8_e4m3fn, row-major (its
    transpose is the column-major operand ``_scaled_mm`` needs) and ``scale`` ``[1, N]`` float32."""

    weight: torch.Tensor
    scale: torch.Tensor


def _scales(amax: torch.Tensor) -> torch.Tensor:
    """``amax / 448``, zeros replaced by the dtype's epsilon (compressed-tensors'
    ``calculate_qparams`` for a symmetric FP8 scale)."""
    scale = amax / FP8_MAX
    return torch.where(scale == 0, torch.finfo(scale.dtype).eps, scale)


def _round(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 weight and its per-row scale ``[N, 1]`` (in the weight's dtype), as compressed-tensors
    rounds them for the ``fp8`` scheme (symmetric, per output channel, min-max)."""
    scale = _scales(weight.abs().amax(dim=-1, keepdim=True))
    return _round(weight, scale), scale


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (row) FP8 activations ``[M, K]`` and their float32 scales ``[M, 1]``."""
    xf = x.float()
    scale = _scales(xf.abs().amax(dim=-1, keepdim=True))
    return _round(xf, scale), scale


def fp8_linear(x: torch.Tensor, w: Fp8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with ``x`` quantized per token and one FP8 GEMM, in ``x``'s dtype."""
    q, scale = quantize_tokens(x.reshape(-1, x.shape[-1]))
    out = torch._scaled_mm(q, w.weight.t(), scale_a=scale, scale_b=w.scale, out_dtype=x.dtype)
    out = out.reshape(*x.shape[:-1], out.shape[-1])
    return out if bias is None else out + bias


def linear(x: torch.Tensor, w: torch.Tensor | Fp8Weight,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """The fast path's linear: FP8 GEMM for an :class:`Fp8Weight`, else ``F.linear``."""
    return fp8_linear(x, w, bias) if isinstance(w, Fp8Weight) else F.linear(x, w, bias)


def is_fp8(model: nn.Module) -> bool:
    """Whether ``model``'s linears hold FP8 weights with scales."""
    return any(isinstance(getattr(m, "weight_scale", None), torch.Tensor) for m in model.modules())


def quantized_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every linear the ``fp8`` scheme quantizes (all but ``lm_head``)."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.split(".")[-1] not in IGNORED]


def _set_fp8(module: nn.Linear, weight: torch.Tensor, scale: torch.Tensor) -> None:
    module.weight = nn.Parameter(weight, requires_grad=False)
    module.register_buffer("weight_scale", scale)


@torch.no_grad()
def quantize_fp8(model: nn.Module) -> nn.Module:
    """Round ``model``'s linears (all but ``lm_head``) to FP8 in place, as ``minitron quantize
    --scheme fp8`` writes them; returns the model, which then runs only on the fast path."""
    for _, module in quantized_linears(model):
        _set_fp8(module, *quantize_weight(module.weight))
    return model


def check_fp8_folder(path: str | Path) -> None:
    """Refuse a quantized folder the fast path does not run (anything but compressed-tensors
    ``fp8``), naming the backend that does."""
    quant = read_quantization(path)
    if quant is not None and (quant.scheme, quant.format) != ("fp8", COMPRESSED):
        raise MinitronError(f"the torch backend runs 16-bit and fp8 (compressed-tensors) "
                            f"checkpoints; {Path(path).name} is {quant.label}: time it with "
                            "--backend vllm")


@torch.no_grad()
def load_fp8_checkpoint(path: str | Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The model of a compressed-tensors ``fp8`` folder on ``device``: FP8 weights and their
    scales as stored, every other tensor in ``dtype``."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ..arch.modeling import load_config

    path = Path(path)
    check_fp8_folder(path)
    config = load_config(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise MinitronError(f"{path} has no .safetensors weights")
    state = {k: v for f in files for k, v in load_file(f, device=str(device)).items()}
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    replaced = set()
    for name, module in quantized_linears(model):
        weight, scale = state.pop(f"{name}.weight", None), state.pop(f"{name}.weight_scale", None)
        if weight is None or scale is None or weight.dtype != FP8 \
                or weight.shape != module.weight.shape:
            raise MinitronError(f"{path} is not an fp8 checkpoint of its config: {name} has no "
                                f"FP8 weight of shape {list(module.weight.shape)} with a scale")
        _set_fp8(module, weight, scale.float())
        replaced |= {f"{name}.weight", f"{name}.weight_scale"}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - replaced - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    if missing or unexpected:
        raise MinitronError(f"{path} does not match its config: missing {sorted(missing)[:3]}, "
                            f"unexpected {unexpected[:3]}")
    model.tie_weights()
    return model.eval()


def _row_scales(model: nn.Module) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Storage address -> (FP8 weight, float32 scale ``[N, 1]``) of every FP8 linear."""
    return {m.weight.untyped_storage().data_ptr(): (m.weight, m.weight_scale.float())
            for m in model.modules() if isinstance(getattr(m, "weight_scale", None), torch.Tensor)}


class ScaleTable:
    """Finds the per-row scales of the weight views an adapter returns (whole weights or row
    slices of a fused one), by the storage they share with their module's weight."""

    def __init__(self, model: nn.Module):
        self.by_storage = _row_scales(model)

    def scale(self, view: torch.Tensor) -> torch.Tensor:
        found = self.by_storage.get(view.untyped_storage().data_ptr())
        if found is None:
            raise MinitronError(f"an FP8 weight {list(view.shape)} has no weight_scale")
        base, scale = found
        first = (view.storage_offset() - base.storage_offset()) // base.stride(0)
        return scale[first:first + view.shape[0]]


def fused(parts: list[torch.Tensor], table: ScaleTable | None) -> torch.Tensor | Fp8Weight:
    """Row-concatenation of ``parts``: a 16-bit matrix, or an :class:`Fp8Weight` with their
    scales where they are FP8; refuses a mix and FP8 shapes the CUDA GEMM cannot take."""
    kinds = {p.dtype == FP8 for p in parts}
    if len(kinds) > 1:
        raise MinitronError("the torch backend fuses projections of one precision; this model "
                            "mixes FP8 and 16-bit ones")
    weight = (parts[0] if len(parts) == 1 else torch.cat(parts)).detach()
    if not kinds.pop():
        return weight
    if table is None or any(n % GEMM_MULTIPLE for n in weight.shape):
        raise MinitronError(f"FP8 GEMMs need both dimensions in multiples of {GEMM_MULTIPLE}; "
                            f"a fused projection is {list(weight.shape)}")
    scale = torch.cat([table.scale(p) for p in parts]).reshape(1, -1).contiguous()
    return Fp8Weight(weight, scale)


def check_fp8_device(device: torch.device, label: str) -> None:
    """Refuse, in one line, a device where ``torch._scaled_mm`` has no row-wise FP8 GEMM
    (CUDA below sm_89, or a torch without it), naming the backend that runs ``label``."""
    where = str(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    try:
        w = Fp8Weight(torch.ones(GEMM_MULTIPLE, GEMM_MULTIPLE, device=device).to(FP8),
                      torch.ones(1, GEMM_MULTIPLE, device=device))
        fp8_linear(torch.ones(1, GEMM_MULTIPLE, device=device, dtype=torch.bfloat16), w)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise MinitronError(f"the torch backend's FP8 GEMM (torch._scaled_mm, row-wise scales; "
                            f"CUDA sm_89+) does not run on {where} with torch {torch.__version__} "
                            f"({first}): time {label} with --backend vllm") from None
