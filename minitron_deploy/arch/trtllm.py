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

from ..core.errors import MinitronError

Parts = dict[str, list[torch.Tensor]]
#: Bias parts, aligned with the weight parts of the same linear (None: that part has no bias).
BiasParts = dict[str, list[torch.Tensor | None]]


def active_windows(config) -> list[int | None]:
    """Each layer's sliding attention window, None where the layer attends to the whole context
    (no window, a full-attention layer, or a window of at least max_position_embeddings)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or \
        ["sliding_attention"] * config.num_hidden_layers
    limit = config.max_position_embeddings
    return [window if t == "sliding_attention" and window is not None and window < limit
            else None for t in types]


def rope_parameters(config) -> dict:
    """transformers 5 keeps rope_theta, rope_type and scaling in ``config.rope_parameters``."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", "default")
    return params


class TrtllmLayout:
    """Llama layout: RMSNorm, gated SiLU MLP; ``attn_bias`` gives ``attention.qkv`` and
    ``attention.dense`` biases, ``mlp_bias`` every MLP linear one (TensorRT-LLM's ``Attention``
    and ``GatedMLP`` with ``bias=``)."""

    architecture: ClassVar[str] = "LlamaForCausalLM"
    hidden_act: ClassVar[str] = "silu"
    #: Linears TensorRT-LLM runs as one GEMM: in FP8 they must share their scales.
    shared_scales: ClassVar[tuple[tuple[str, ...], ...]] = (("mlp.fc", "mlp.gate"),)
    #: Whether ``attn_bias`` also gives ``attention.dense`` a bias (TensorRT-LLM's Qwen: never).
    dense_bias: ClassVar[bool] = True

    def __init__(self, adapter):
        self.adapter = adapter

    def config_fields(self, config) -> dict:
        """Family-specific entries of config.json (raises MinitronError for what it cannot express)."""
        return self.bias_fields(config)

    def hf_biases(self, config) -> tuple[bool, bool, bool]:
        """Whether the HF model has q/k/v, o_proj and MLP biases."""
        attention = bool(getattr(config, "attention_bias", False))
        return attention, attention, bool(getattr(config, "mlp_bias", False))

    def bias_fields(self, config) -> dict:
        """``attn_bias`` / ``mlp_bias``; an o_proj bias the architecture has no place for is refused."""
        qkv, dense, mlp = self.hf_biases(config)
        if dense and not self.dense_bias:
            raise MinitronError(f"TensorRT-LLM's {self.architecture} has no attention output "
                                f"(o_proj) bias, which this {config.model_type} model has")
        return {"attn_bias": qkv or dense, "mlp_bias": mlp}

    def window_fields(self, config) -> dict:
        """The attention windows in config.json. A TensorRT-LLM (<= 1.2) checkpoint of this
        architecture has none (TensorRT-LLM takes ``max_attention_window`` at runtime), so an
        active sliding window is refused rather than exported as full attention."""
        windows = [w for w in active_windows(config) if w is not None]
        if windows:
            setting = "use_sliding_window + sliding_window" \
                if getattr(config, "use_sliding_window", None) else "sliding_window"
            raise MinitronError(
                f"{config.model_type} {setting}={windows[0]} (shorter than "
                f"max_position_embeddings={config.max_position_embeddings}) on {len(windows)} of "
                f"{config.num_hidden_layers} layers: a TensorRT-LLM {self.architecture} checkpoint "
                "carries no attention window and its engine would attend to the whole context; "
                "use --format hf")
        return {}

    def rope(self, config) -> dict:
        """The rope parameters written as ``rotary_base`` / ``rotary_scaling``."""
        return rope_parameters(config)

    def norm(self, norm: nn.Module) -> dict[str, torch.Tensor]:
        return {"weight": norm.weight.data}

    def layer_norms(self, layer: nn.Module) -> dict[str, nn.Module]:
        """TensorRT-LLM name -> HF norm module, for one layer."""
        return {"input_layernorm": layer.input_layernorm,
                "post_layernorm": layer.post_attention_layernorm}

    def linears(self, layer: nn.Module) -> tuple[Parts, BiasParts]:
        """``(weights, biases)``: TensorRT-LLM linear name -> HF parts, concatenated row-wise;
        the bias parts align with the weight parts (None where the HF linear has none)."""
        att, mlp = self.adapter.get_attention(layer), self.adapter.get_mlp(layer)
        weights = {"attention.qkv": [att.q, att.k, att.v], "attention.dense": [att.o],
                   **self.mlp_weights(mlp.gate, mlp.up, mlp.down)}
        biases = {"attention.qkv": [att.q_bias, att.k_bias, att.v_bias],
                  "attention.dense": [att.o_bias],
                  **self.mlp_weights(mlp.gate_bias, mlp.up_bias, mlp.down_bias)}
        return weights, biases

    def mlp_weights(self, gate, up, down) -> Parts:
        """The MLP's TensorRT-LLM linears from HF parts (weights, or their biases)."""
        return {"mlp.fc": [gate], "mlp.gate": [up], "mlp.proj": [down]}

    def extra_layer_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {}
