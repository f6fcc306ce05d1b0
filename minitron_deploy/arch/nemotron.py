"""Nemotron: non-gated MLP (up -> relu^2 -> down) and LayerNorm1P (weight + 1, with bias);
TensorRT-LLM's ``GPTForCausalLM`` with the LayerNorm1P weights folded (weight + 1)."""

import torch
from torch import nn

from ..core.errors import MinitronError
from .base import DecoderAdapter, MLPWeights, new_linear
from .trtllm import Parts, TrtllmLayout


class NemotronTrtllm(TrtllmLayout):
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


class NemotronAdapter(DecoderAdapter):
    model_types = ("nemotron",)
    norm_kind = "layer"
    norm_offset = 1.0
    static_features = frozenset({"layernorm", "plain_mlp"})
    trtllm = NemotronTrtllm

    def get_mlp(self, layer: nn.Module) -> MLPWeights:
        mlp = layer.mlp
        return MLPWeights(
            up=mlp.up_proj.weight.data, down=mlp.down_proj.weight.data,
            up_bias=None if mlp.up_proj.bias is None else mlp.up_proj.bias.data,
            down_bias=None if mlp.down_proj.bias is None else mlp.down_proj.bias.data,
        )

    def set_mlp(self, layer: nn.Module, w: MLPWeights) -> None:
        mlp = layer.mlp
        mlp.up_proj = new_linear(w.up, w.up_bias)
        mlp.down_proj = new_linear(w.down, w.down_bias)
        mlp.intermediate_size = w.up.shape[0]
