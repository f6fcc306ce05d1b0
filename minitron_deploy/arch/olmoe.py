"""OLMoE: RMSNorm on q and k over the whole projection (as OLMo 2, but before the norms of a
pre-norm decoder) and sparse MoE MLPs of width ``intermediate_size`` in every layer.

transformers sizes the q norm by ``hidden_size`` and the k norm by ``hidden_size // heads * kv
heads``, so a loadable OLMoE keeps ``heads * head_dim == hidden_size``: hidden and heads are
pruned together."""

from __future__ import annotations

from torch import nn

from ..core.shape import ModelShape
from .base import AttentionWeights
from .moe import MoEAdapter


class OlmoeAdapter(MoEAdapter):
    model_types = ("olmoe",)
    static_features = frozenset({"projection_qk_norm", "moe"})
    expert_ffn_field = "intermediate_size"

    def shape_error(self, config, shape: ModelShape) -> str | None:
        if shape.num_heads * shape.head_dim != shape.hidden_size:
            return (f"OLMoE sizes its q norm by hidden_size, so heads x head_dim "
                    f"({shape.num_heads} x {shape.head_dim}) must equal hidden_size "
                    f"({shape.hidden_size}): prune hidden and heads together")
        return None

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
