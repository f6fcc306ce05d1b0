"""Gemma 3 text models (``Gemma3ForCausalLM``, ``gemma3_text``): the Gemma 2 layout without
soft-capping by default, plus per-head (1 + w) RMSNorm on q and k and separate rope bases for
sliding and full layers (``rope_parameters`` per layer type); TensorRT-LLM's
``Gemma3ForCausalLM`` takes the sliding layers' base as ``rope_local_base_freq``."""

import torch
from torch import nn

from ..core.errors import MinitronError
from .gemma2 import Gemma2Adapter, Gemma2Trtllm


class Gemma3Trtllm(Gemma2Trtllm):
    architecture = "Gemma3ForCausalLM"

    def config_fields(self, config) -> dict:
        fields = super().config_fields(config)
        if fields.pop("attn_logit_softcapping") is not None:
            raise MinitronError("TensorRT-LLM's Gemma 3 has no attention soft-capping")
        local = config.rope_parameters["sliding_attention"]
        if local.get("rope_type", "default") != "default":
            raise MinitronError("TensorRT-LLM's Gemma 3 scales no rope of its sliding layers")
        return {**fields, "rope_local_base_freq": float(local["rope_theta"])}

    def rope(self, config) -> dict:
        return {"rope_type": "default", **config.rope_parameters["full_attention"]}

    def extra_layer_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        q_norm, k_norm = self.adapter.qk_norms(layer)
        return {"attention.q_layernorm.weight": q_norm.weight.data + 1.0,
                "attention.k_layernorm.weight": k_norm.weight.data + 1.0}


class Gemma3Adapter(Gemma2Adapter):
    model_types = ("gemma3_text",)
    static_features = Gemma2Adapter.static_features | {"head_qk_norm", "local_rope"}
    trtllm = Gemma3Trtllm
