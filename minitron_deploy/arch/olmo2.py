"""OLMo 2: norms after attention and MLP instead of before, and RMSNorm on q and k over the
whole projection (all heads at once), so trimming heads slices those norms with the rows.

TensorRT-LLM has no OLMo 2 checkpoint architecture: export to TensorRT-LLM is refused.
"""

from __future__ import annotations

from torch import nn

from .base import AttentionWeights, DecoderAdapter


class Olmo2Adapter(DecoderAdapter):
    model_types = ("olmo2",)
    static_features = frozenset({"post_norms", "projection_qk_norm"})
    trtllm = None
    trtllm_refusal = "TensorRT-LLM has no OLMo 2 checkpoint architecture"

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.post_attention_layernorm, layer.post_feedforward_layernorm]

    def get_attention(self, layer: nn.Module) -> AttentionWeights:
        w = super().get_attention(layer)
        w.q_norm, w.k_norm = layer.self_attn.q_norm.weight.data, layer.self_attn.k_norm.weight.data
        return w

    def set_attention(self, layer: nn.Module, w: AttentionWeights, num_heads: int,
                      num_kv_heads: int) -> None:
        super().set_attention(layer, w, num_heads, num_kv_heads)
        attn = layer.self_attn
        attn.q_norm.weight = nn.Parameter(w.q_norm.detach().clone())
        attn.k_norm.weight = nn.Parameter(w.k_norm.detach().clone())
