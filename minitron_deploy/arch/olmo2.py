"""OLMo 2: norms after attention and MLP instead of before, and RMSNorm on q and k over the
whole projection (all heads at once), so trimming heads slices those norms with the rows.

TensorRT-LLM has no OLMo 2 checkpoint architecture: export to TensorRT-LLM is refused.
"""

from __future__ import annotations

from torch import nn

from .base import DecoderAdapter


class Olmo2Adapter(DecoderAdapter):
    model_types = ("olmo2",)
    static_features = frozenset({"post_norms", "projection_qk_norm"})
    trtllm = None
    trtllm_refusal = "TensorRT-LLM has no OLMo 2 checkpoint architecture"

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.post_attention_layernorm, layer.post_feedforward_layernorm]
