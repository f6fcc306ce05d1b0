"""Hugging Face model -> TensorRT-LLM checkpoint (``config.json`` + ``rank{i}.safetensors``).

Our own converter for every family whose adapter has a TensorRT-LLM layout (``arch.trtllm``).
ModelOpt 0.47's ``export_tensorrt_llm_checkpoint`` was checked and is not used: with
transformers 5 it omits ``rotary_base`` and ``rotary_scaling`` (a Llama-3 model would run with
base 10000), always writes float16, fails without an explicit ``inference_tensor_parallel``,
names Qwen2/3 ``QWenForCausalLM`` without ``qwen_type``, writes Nemotron's ``rotary_pct`` as
1.0 and has no Phi-3 mapping.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .._version import __version__
from ..arch.trtllm import BiasParts, Parts, TrtllmLayout
from ..core.errors import MinitronError
from ..core.shape import ModelShape
from . import fp8 as fp8_lib
from .shard import split_tensors
from .trtllm_families import get_family, rotary_scaling

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Scales, kept in float32 whatever the checkpoint's dtype.
_FP32_SUFFIXES = ("scaling_factor", "per_channel_scale")
#: TensorRT-LLM's quantization mode for FP8 weights per channel, activations per token.
ROWWISE_ALGO = "FP8_PER_CHANNEL_PER_TOKEN"


def _norm_eps(config) -> float:
    for name in ("rms_norm_eps", "norm_eps", "layer_norm_eps"):
        if getattr(config, name, None) is not None:
            return float(getattr(config, name))
    raise MinitronError(f"{config.model_type} config has no norm epsilon")


def trtllm_config(config, dtype: str, tp: int, fp8: bool, quant_algo: str = "FP8") -> dict:
    """The config.json TensorRT-LLM's ``PretrainedConfig.from_dict`` reads (``quant_algo``
    when ``fp8``)."""
    family = get_family(config)
    shape = ModelShape.from_config(config)
    rope = family.rope(config)
    rotary_pct = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    return {
        "producer": {"name": "minitron-deploy", "version": __version__},
        "architecture": family.architecture,
        "dtype": dtype,
        "logits_dtype": "float32",
        "vocab_size": config.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_size": shape.head_dim,
        "hidden_act": family.hidden_act,
        "norm_epsilon": _norm_eps(config),
        "max_position_embeddings": config.max_position_embeddings,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": float(rope["rope_theta"]),
        "rotary_scaling": rotary_scaling(rope),
        "rotary_pct": float(rotary_pct),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "share_embedding_table": False,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": {"quant_algo": quant_algo if fp8 else None, "kv_cache_quant_algo": None,
                         "exclude_modules": ["lm_head"] if fp8 else []},
        **family.config_fields(config),
        **family.window_fields(config),
    }


def _fused_shape(parts: list[torch.Tensor]) -> tuple[int, int]:
    return sum(p.shape[0] for p in parts), parts[0].shape[1]


def _biased_linears(family: TrtllmLayout, config: dict, names) -> set[str]:
    """The linears among ``names`` that the config's ``attn_bias`` / ``mlp_bias`` give a bias."""
    attention = {"attention.qkv"} | ({"attention.dense"} if family.dense_bias else set())
    return {n for n in names if (config.get("attn_bias") and n in attention)
            or (config.get("mlp_bias") and n.startswith("mlp."))}


def _biases(weights: Parts, biases: BiasParts, expected: set[str], prefix: str
            ) -> dict[str, torch.Tensor]:
    """The ``expected`` biases, zero where an HF part has none; an HF bias the config gives no
    place is refused (it would be dropped)."""
    dropped = [n for n, parts in biases.items()
               if n not in expected and any(p is not None for p in parts)]
    if dropped:
        raise MinitronError(f"the TensorRT-LLM config has no bias for {', '.join(dropped)} "
                            "but the model has one")
    return {f"{prefix}.{name}.bias": torch.cat([
        b if b is not None else w.new_zeros(w.shape[0])
        for w, b in zip(weights[name], biases[name])]) for name in sorted(expected)}


def _layer_tensors(family: TrtllmLayout, layer: nn.Module, prefix: str, fp8: bool,
                   shapes: dict[str, tuple[int, int]], index: int, config: dict,
                   row_scales: dict[nn.Module, torch.Tensor] | None = None
                   ) -> dict[str, torch.Tensor]:
    """One layer's tensors; ``shapes`` holds layer 0's linear shapes (non-uniform is refused)."""
    out = {f"{prefix}.{name}.{k}": v for name, norm in family.layer_norms(layer).items()
           for k, v in family.norm(norm).items()}
    weights, biases = family.linears(layer)
    for name, parts in weights.items():
        if shapes.setdefault(name, _fused_shape(parts)) != _fused_shape(parts):
            raise MinitronError(f"layer {index} {name} has a different shape from layer 0; "
                                "TensorRT-LLM needs uniform layers")
    out.update(_biases(weights, biases, _biased_linears(family, config, weights), prefix))
    for name, parts in weights.items():
        out[f"{prefix}.{name}.weight"] = torch.cat(parts)
    if row_scales is not None:
        out.update(_rowwise_layer(layer, prefix, weights, out, row_scales))
    elif fp8:
        out.update(_fp8_layer(family, layer, prefix, weights, out))
    out.update({f"{prefix}.{k}": v for k, v in family.extra_layer_tensors(layer).items()})
    return out


def _fp8_layer(family: TrtllmLayout, layer: nn.Module, prefix: str,
               weights: dict[str, list[torch.Tensor]], out: dict) -> dict[str, torch.Tensor]:
    """FP8 weights and scales; linears TensorRT-LLM fuses into one GEMM share their scales."""
    modules = {name: [fp8_lib.owner(layer, p) for p in parts] for name, parts in weights.items()}
    groups = [g for g in family.shared_scales if all(n in weights for n in g)]
    groups += [(n,) for n in weights if not any(n in g for g in groups)]
    fp8 = {}
    for group in groups:
        members = list(dict.fromkeys(m for n in group for m in modules[n]))
        w_scale, a_scale = fp8_lib.group_scales(members)
        for name in group:
            fp8[f"{prefix}.{name}.weight"] = fp8_lib.to_fp8(out[f"{prefix}.{name}.weight"], w_scale)
            fp8[f"{prefix}.{name}.weights_scaling_factor"] = w_scale
            fp8[f"{prefix}.{name}.activation_scaling_factor"] = a_scale
    return fp8


def _rowwise_layer(layer: nn.Module, prefix: str, weights: dict[str, list[torch.Tensor]],
                   out: dict, row_scales: dict[nn.Module, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """FP8 weights already quantized per output row (their values held exactly in 16 bits)
    and their scales, concatenated as the rows are."""
    rows = {}
    for name, parts in weights.items():
        scales = [_row_scale(layer, part, row_scales) for part in parts]
        rows[f"{prefix}.{name}.weight"] = out[f"{prefix}.{name}.weight"].to(torch.float8_e4m3fn)
        rows[f"{prefix}.{name}.per_channel_scale"] = torch.cat(scales)
    return rows


def _row_scale(scope: nn.Module, weight: torch.Tensor,
               row_scales: dict[nn.Module, torch.Tensor]) -> torch.Tensor:
    """The per-row scales of the quantized linear in ``scope`` whose weight is ``weight``."""
    ptr = weight.untyped_storage().data_ptr()
    for module in scope.modules():
        if module in row_scales and module.weight.untyped_storage().data_ptr() == ptr:
            return row_scales[module]
    raise MinitronError("a linear layer of the quantized checkpoint has no FP8 scales")


def convert(model: nn.Module, dtype: str = "bfloat16", fp8: bool = False,
            tp: int = 1, row_scales: dict[nn.Module, torch.Tensor] | None = None
            ) -> tuple[dict, dict]:
    """``(config, tensors)``: the config for ``tp`` ranks and the unsharded tensors. With ``fp8``
    the model must already be calibrated (``fp8.calibrate_fp8``); its linears become FP8.
    With ``row_scales`` (linear -> its per-row scales) the linears already hold FP8 values
    (``quantized.load_fp8_student``): they are written as ``FP8_PER_CHANNEL_PER_TOKEN``."""
    if dtype not in TORCH_DTYPES:
        raise MinitronError(f"unknown TensorRT-LLM dtype {dtype!r}")
    config = model.config
    family = get_family(config)
    adapter = family.adapter
    fp8 = fp8 or row_scales is not None
    trt_config = trtllm_config(config, dtype, tp, fp8,
                               "FP8" if row_scales is None else ROWWISE_ALGO)
    tensors = {"transformer.vocab_embedding.weight": adapter.embed_tokens(model).weight.data}
    shapes: dict[str, tuple[int, int]] = {}
    for i, layer in enumerate(adapter.layers(model)):
        tensors.update(_layer_tensors(family, layer, f"transformer.layers.{i}", fp8, shapes, i,
                                      trt_config, row_scales))
    tensors.update({f"transformer.ln_f.{k}": v
                    for k, v in family.norm(adapter.final_norm(model)).items()})
    tensors["lm_head.weight"] = adapter.lm_head(model).weight.data
    cast = {k: v if v.dtype == torch.float8_e4m3fn or k.endswith(_FP32_SUFFIXES)
            else v.to(TORCH_DTYPES[dtype]) for k, v in tensors.items()}
    cast = {k: v.detach().cpu().contiguous().clone() for k, v in cast.items()}
    return trt_config, cast


def write_trtllm(model: nn.Module, directory: Path, dtype: str = "bfloat16", tp: int = 1,
                 fp8_batches: Sequence[torch.Tensor] | None = None,
                 row_scales: dict[nn.Module, torch.Tensor] | None = None) -> dict:
    """Convert (calibrating FP8 first when ``fp8_batches`` is given; an FP8 model with its
    ``row_scales`` as :func:`convert` takes it), shard for ``tp`` ranks and write
    ``config.json`` + ``rank{i}.safetensors`` into ``directory``. Returns the config."""
    fp8 = fp8_batches is not None
    if fp8:
        fp8_lib.calibrate_fp8(model, fp8_batches)
    config, tensors = convert(model, dtype, fp8, tp, row_scales)
    for rank, shard in enumerate(split_tensors(tensors, config, tp)):
        save_file(shard, str(directory / f"rank{rank}.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config
