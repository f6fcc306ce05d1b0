"""How each model family maps onto a TensorRT-LLM checkpoint: one class per family.

A family names the TensorRT-LLM architecture and its config fields, and lays out every layer's
linears as lists of HF weight parts that are concatenated row-wise (``attention.qkv`` = q, k, v).
Conventions follow TensorRT-LLM's own converters (1.2.x): Llama-style ``mlp.fc`` is HF
``gate_proj`` and ``mlp.gate`` is ``up_proj``; Phi-3's fused ``mlp.fc`` is [up; gate] (swiglu
activates the second half); Nemotron is ``GPTForCausalLM`` with LayerNorm1P folded (weight + 1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..arch import DecoderAdapter, get_adapter
from ..errors import MinitronError

Parts = dict[str, list[torch.Tensor]]


def rope_parameters(config) -> dict:
    """transformers 5 keeps rope_theta, rope_type and scaling in ``config.rope_parameters``."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", "default")
    return params


def rotary_scaling(params: dict) -> dict | None:
    """TensorRT-LLM's ``rotary_scaling`` for the rope types our reference runner implements."""
    kind = params["rope_type"]
    if kind == "default":
        return None
    if kind == "linear":
        return {"type": "linear", "factor": float(params["factor"])}
    if kind == "llama3":
        return {"type": "llama3", "rope_type": "llama3", "factor": float(params["factor"]),
                "low_freq_factor": float(params["low_freq_factor"]),
                "high_freq_factor": float(params["high_freq_factor"]),
                "original_max_position_embeddings":
                    int(params["original_max_position_embeddings"])}
    raise MinitronError(f"rope_type {kind!r} is not supported by the TensorRT-LLM converter "
                        "(supported: default, linear, llama3)")


class TrtllmFamily:
    """Llama layout: RMSNorm, gated SiLU MLP, no biases."""

    model_types: ClassVar[tuple[str, ...]] = ("llama",)
    architecture: ClassVar[str] = "LlamaForCausalLM"
    hidden_act: ClassVar[str] = "silu"
    #: Linears TensorRT-LLM runs as one GEMM: in FP8 they must share their scales.
    shared_scales: ClassVar[tuple[tuple[str, ...], ...]] = (("mlp.fc", "mlp.gate"),)

    def __init__(self, adapter: DecoderAdapter):
        self.adapter = adapter

    def config_fields(self, config) -> dict:
        """Family-specific entries of config.json."""
        return {"attn_bias": self._attention_has_bias(config), "mlp_bias": False}

    @staticmethod
    def _attention_has_bias(config) -> bool:
        return bool(getattr(config, "attention_bias", False))

    def norm(self, norm: nn.Module) -> dict[str, torch.Tensor]:
        return {"weight": norm.weight.data}

    def linears(self, layer: nn.Module) -> tuple[Parts, Parts]:
        """``(weights, biases)``: TensorRT-LLM linear name -> HF parts, concatenated row-wise."""
        att, mlp = self.adapter.get_attention(layer), self.adapter.get_mlp(layer)
        weights = {"attention.qkv": [att.q, att.k, att.v], "attention.dense": [att.o],
                   **self.mlp_weights(mlp.gate, mlp.up, mlp.down)}
        biases = {}
        if att.q_bias is not None:
            biases["attention.qkv"] = [att.q_bias, att.k_bias, att.v_bias]
        return weights, biases

    def mlp_weights(self, gate, up, down) -> Parts:
        return {"mlp.fc": [gate], "mlp.gate": [up], "mlp.proj": [down]}

    def extra_layer_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {}


class MistralFamily(TrtllmFamily):
    model_types = ("mistral",)
    architecture = "MistralForCausalLM"


class Qwen2Family(TrtllmFamily):
    model_types = ("qwen2",)
    architecture = "Qwen2ForCausalLM"

    def config_fields(self, config) -> dict:
        return {"qwen_type": "qwen2", "attn_bias": True, "mlp_bias": False}


class Qwen3Family(TrtllmFamily):
    """Qwen3: no q/k/v bias, per-head RMSNorm on q and k (``qk_layernorm``)."""

    model_types = ("qwen3",)
    architecture = "Qwen3ForCausalLM"

    def config_fields(self, config) -> dict:
        return {"qwen_type": "qwen3", "attn_bias": self._attention_has_bias(config),
                "mlp_bias": False, "qk_layernorm": True}

    def extra_layer_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {"attention.q_layernorm.weight": layer.self_attn.q_norm.weight.data,
                "attention.k_layernorm.weight": layer.self_attn.k_norm.weight.data}


class Phi3Family(TrtllmFamily):
    """Phi-3: one fused swiglu ``mlp.fc`` = [up; gate]."""

    model_types = ("phi3",)
    architecture = "Phi3ForCausalLM"
    hidden_act = "swiglu"
    shared_scales = ()

    def config_fields(self, config) -> dict:
        return {}

    def mlp_weights(self, gate, up, down) -> Parts:
        return {"mlp.fc": [up, gate], "mlp.proj": [down]}


class NemotronFamily(TrtllmFamily):
    """Nemotron: GPT variant with LayerNorm1P (stored as weight + 1) and relu^2 MLP."""

    model_types = ("nemotron",)
    architecture = "GPTForCausalLM"
    hidden_act = "squared-relu"
    shared_scales = ()

    def config_fields(self, config) -> dict:
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise MinitronError("Nemotron with linear biases is not supported by the converter")
        return {"gpt_variant": "nemotron", "bias": False}

    def norm(self, norm: nn.Module) -> dict[str, torch.Tensor]:
        return {"weight": norm.weight.data + 1.0, "bias": norm.bias.data}

    def mlp_weights(self, gate, up, down) -> Parts:
        return {"mlp.fc": [up], "mlp.proj": [down]}


_FAMILIES: dict[str, type[TrtllmFamily]] = {
    t: cls for cls in (TrtllmFamily, MistralFamily, Qwen2Family, Qwen3Family, Phi3Family,
                       NemotronFamily) for t in cls.model_types}


def get_family(config) -> TrtllmFamily:
    """The TensorRT-LLM mapping of a transformers config's family."""
    adapter = get_adapter(config)  # refuses unsupported families with the list of supported ones
    return _FAMILIES[config.model_type](adapter)
