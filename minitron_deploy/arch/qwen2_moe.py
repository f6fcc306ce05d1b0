"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): the Qwen2 attention (q/k/v biases when
``qkv_bias``, sliding windows by ``layer_types``) with sparse MoE MLPs (softmax router, top-k
renormalised when ``norm_topk_prob``, experts of width ``moe_intermediate_size``) plus a shared
expert every token goes through: ``mlp.shared_expert`` (a gated MLP of width
``shared_expert_intermediate_size``, its own width axis) scaled by
``sigmoid(mlp.shared_expert_gate(x))`` (``Linear(H, 1)``). ``mlp_only_layers`` and
``decoder_sparse_step`` keep some layers dense (``intermediate_size``)."""

from __future__ import annotations

from torch import nn

from ..core.errors import MinitronError
from ..core.shape import ModelShape
from .base import new_linear
from .moe import ExpertShape, ExpertWeights, MoEAdapter


class Qwen2MoeAdapter(MoEAdapter):
    model_types = ("qwen2_moe",)
    static_features = frozenset({"moe"})

    def features(self, config) -> set[str]:
        found = super().features(config)
        if getattr(config, "qkv_bias", False):  # Qwen2-MoE's switch (not attention_bias)
            found.add("qkv_bias")
        return found

    def expert_shape(self, config) -> ExpertShape:
        shape = super().expert_shape(config)
        return ExpertShape(shape.num_experts, shape.ffn, shape.top_k,
                           shared_ffn=config.shared_expert_intermediate_size)

    def apply_expert_shape(self, config, shape: ExpertShape) -> None:
        super().apply_expert_shape(config, shape)
        if shape.shared_ffn is not None:
            config.shared_expert_intermediate_size = shape.shared_ffn

    def shared_expert_output_proj(self, layer: nn.Module) -> nn.Linear:
        """The projection whose input is the shared expert's intermediate activation."""
        return layer.mlp.shared_expert.down_proj

    def get_experts(self, layer: nn.Module) -> ExpertWeights:
        w = super().get_experts(layer)
        shared = _Shared(layer.mlp.shared_expert)
        w.shared = self.get_mlp(shared)
        w.shared_gate = layer.mlp.shared_expert_gate.weight.data
        return w

    def set_experts(self, layer: nn.Module, w: ExpertWeights) -> None:
        super().set_experts(layer, w)
        self.set_mlp(_Shared(layer.mlp.shared_expert), w.shared)
        layer.mlp.shared_expert_gate = new_linear(w.shared_gate, None)

    def vllm_overrides(self, config) -> dict | None:
        """None; vLLM's Qwen2-MoE derives head_dim from hidden_size / heads (no other
        architecture reads its weights), so checkpoints whose head_dim differs are refused."""
        shape = ModelShape.from_config(config)
        if shape.head_dim * shape.num_heads != shape.hidden_size:
            raise MinitronError(f"vLLM's Qwen2-MoE derives head_dim from hidden_size / heads "
                                f"({shape.hidden_size} / {shape.num_heads}), and this checkpoint's "
                                f"is {shape.head_dim}: prune hidden and heads together to "
                                "heads x head_dim = hidden_size, or serve it with transformers")
        return None

    def update_config(self, config, kept_layers: list[int]) -> None:
        super().update_config(config, kept_layers)
        # layer_types is now explicit; keep max_window_layers from re-deriving a different pattern.
        if getattr(config, "max_window_layers", None) is not None:
            config.max_window_layers = min(config.max_window_layers, len(kept_layers))


class _Shared:
    """The shared expert seen as a layer whose ``mlp`` it is (for the dense MLP accessors)."""

    def __init__(self, mlp: nn.Module) -> None:
        self.mlp = mlp
