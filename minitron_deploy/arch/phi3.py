"""Phi-3: fused ``qkv_proj`` ([q; k; v] rows) and fused ``gate_up_proj`` ([gate; up] rows);
TensorRT-LLM's fused swiglu ``mlp.fc`` is [up; gate] (it activates the second half)."""

import torch
from torch import nn

from .base import AttentionWeights, DecoderAdapter, MLPWeights, new_linear
from .trtllm import Parts, TrtllmLayout


class Phi3Trtllm(TrtllmLayout):
    architecture = "Phi3ForCausalLM"
    hidden_act = "swiglu"
    shared_scales = ()

    def config_fields(self, config) -> dict:
        return {}

    def mlp_weights(self, gate, up, down) -> Parts:
        return {"mlp.fc": [up, gate], "mlp.proj": [down]}


class Phi3Adapter(DecoderAdapter):
    model_types = ("phi3",)
    static_features = frozenset({"fused_projections"})
    trtllm = Phi3Trtllm

    def get_attention(self, layer: nn.Module) -> AttentionWeights:
        attn = layer.self_attn
        q_rows = attn.config.num_attention_heads * attn.head_dim
        kv_rows = attn.num_key_value_heads * attn.head_dim
        q, k, v = attn.qkv_proj.weight.data.split([q_rows, kv_rows, kv_rows], dim=0)
        return AttentionWeights(q=q, k=k, v=v, o=attn.o_proj.weight.data)

    def set_attention(self, layer: nn.Module, w: AttentionWeights, num_heads: int,
                      num_kv_heads: int) -> None:
        attn = layer.self_attn
        attn.qkv_proj = new_linear(torch.cat([w.q, w.k, w.v], dim=0), None)
        attn.o_proj = new_linear(w.o, None)
        # Phi3Attention reads the query width from its config object, shared with the model.
        self._set_head_counts(attn, num_heads, num_kv_heads)

    def get_mlp(self, layer: nn.Module) -> MLPWeights:
        mlp = layer.mlp
        gate, up = mlp.gate_up_proj.weight.data.chunk(2, dim=0)
        return MLPWeights(gate=gate, up=up, down=mlp.down_proj.weight.data)

    def set_mlp(self, layer: nn.Module, w: MLPWeights) -> None:
        mlp = layer.mlp
        mlp.gate_up_proj = new_linear(torch.cat([w.gate, w.up], dim=0), None)
        mlp.down_proj = new_linear(w.down, None)
