"""How a family's weights lay out in a TensorRT-LLM checkpoint: the Llama conventions that each
family file refines (TensorRT-LLM 1.2.x converters).

A layout names the TensorRT-LLM architecture and its config fields, and lays out every layer's
linears as lists of HF weight parts that are concatenated row-wise (``attention.qkv`` = q, k, v).
Llama-style ``mlp.fc`` is HF ``gate_proj`` and ``mlp.gate`` is ``up_proj``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

Parts = dict[str, list[torch.Tensor]]


def rope_parameters(config) -> dict:
    """transformers 5 keeps rope_theta, rope_type and scaling in ``config.rope_parameters``."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", "default")
    return params


class TrtllmLayout:
    """Llama layout: RMSNorm, gated SiLU MLP, optional q/k/v biases."""

    architecture: ClassVar[str] = "LlamaForCausalLM"
    hidden_act: ClassVar[str] = "silu"
    #: Linears TensorRT-LLM runs as one GEMM: in FP8 they must share their scales.
    shared_scales: ClassVar[tuple[tuple[str, ...], ...]] = (("mlp.fc", "mlp.gate"),)

    def __init__(self, adapter):
        self.adapter = adapter

    def config_fields(self, config) -> dict:
        """Family-specific entries of config.json (raises MinitronError for what it cannot express)."""
        return {"attn_bias": bool(getattr(config, "attention_bias", False)), "mlp_bias": False}

    def rope(self, config) -> dict:
        """The rope parameters written as ``rotary_base`` / ``rotary_scaling``."""
        return rope_parameters(config)

    def norm(self, norm: nn.Module) -> dict[str, torch.Tensor]:
        return {"weight": norm.weight.data}

    def layer_norms(self, layer: nn.Module) -> dict[str, nn.Module]:
        """TensorRT-LLM name -> HF norm module, for one layer."""
        return {"input_layernorm": layer.input_layernorm,
                "post_layernorm": layer.post_attention_layernorm}

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
