"""Qwen3: Qwen2 layout without q/k/v biases, plus per-head RMSNorm on q and k (over head_dim, so
never trimmed); TensorRT-LLM's ``qk_layernorm``."""

import torch
from torch import nn

from .qwen2 import Qwen2Adapter
from .trtllm import TrtllmLayout


class Qwen3Trtllm(TrtllmLayout):
    architecture = "Qwen3ForCausalLM"
    dense_bias = False

    def config_fields(self, config) -> dict:
        return {"qwen_type": "qwen3", **super().config_fields(config), "qk_layernorm": True}

    def extra_layer_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        q_norm, k_norm = self.adapter.qk_norms(layer)
        return {"attention.q_layernorm.weight": q_norm.weight.data,
                "attention.k_layernorm.weight": k_norm.weight.data}


class Qwen3Adapter(Qwen2Adapter):
    model_types = ("qwen3",)
    static_features = frozenset({"head_qk_norm"})
    trtllm = Qwen3Trtllm

    def vllm_overrides(self, config) -> dict | None:
        return None  # vLLM's Qwen3 reads head_dim
