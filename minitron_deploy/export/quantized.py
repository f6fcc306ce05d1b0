"""A quantized student into a TensorRT-LLM checkpoint, its quantized weights kept as they are.

compressed-tensors ``fp8`` (``minitron quantize --scheme fp8``, or llm-compressor's FP8_DYNAMIC:
FP8 E4M3 weights with one scale per output channel, activations quantized per token at run
time) is exactly TensorRT-LLM's ``FP8_PER_CHANNEL_PER_TOKEN`` mode (its Fp8Rowwise linears):
every linear's FP8 weight is written unchanged with its scales as ``per_channel_scale``
(float32, one per output row; fused linears such as qkv concatenate their rows and so their
scales). Other schemes are refused in one line naming what takes them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM

from ..arch.modeling import load_config
from ..core.errors import MinitronError
from ..core.quantized import COMPRESSED, Quantization

_SCALE = ".weight_scale"


def check_quantized(quant: Quantization, fmt: str) -> None:
    """Refuse, before loading, a quantized checkpoint this export cannot carry over."""
    if fmt != "trtllm":
        raise MinitronError(f"the checkpoint is already quantized ({quant.label}); only "
                            "--format trtllm takes it (it is served as it is by vLLM)")
    if (quant.scheme, quant.format) != ("fp8", COMPRESSED):
        raise MinitronError(f"TensorRT-LLM export takes fp8 (compressed-tensors) quantized "
                            f"checkpoints, not {quant.label}; export the 16-bit student with "
                            "--dtype fp8 instead, or serve this one with vLLM")


def load_fp8_student(model_dir: str | Path) -> tuple[nn.Module, dict[nn.Module, torch.Tensor]]:
    """The checkpoint as a plain model whose quantized linears hold their FP8 values (in bf16,
    which holds every E4M3 value exactly), and each such linear's per-row scales."""
    config = copy.deepcopy(load_config(model_dir))
    del config.quantization_config
    state, scales = _read_fp8(Path(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        name = (unexpected or sorted(set(missing) - tied))[0]
        raise MinitronError(f"{model_dir}: tensor {name} does not match a "
                            f"{config.model_type} model of this config")
    if tied:
        model.tie_weights()
    model.eval()
    return model, {model.get_submodule(name): scale for name, scale in scales.items()}


def _read_fp8(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state, scales = {}, {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                state[key] = f.get_tensor(key)
    for key in [k for k in state if k.endswith(_SCALE)]:
        module = key[:-len(_SCALE)]
        weight, scale = state[f"{module}.weight"], state.pop(key).float()
        if weight.dtype != torch.float8_e4m3fn or scale.numel() != weight.shape[0]:
            raise MinitronError(f"{module}: expected FP8 weights with one scale per output "
                                f"row, got {weight.dtype} with {scale.numel()} scales")
        state[f"{module}.weight"] = weight.to(torch.bfloat16)
        scales[module] = scale.reshape(-1)
    if not scales:
        raise MinitronError(f"{folder} has no FP8 weight scales (*.weight_scale)")
    return state, scales
