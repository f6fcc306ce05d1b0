"""Qwen2 / Qwen2.5: Llama layout with q/k/v biases; per-layer ``layer_types`` for sliding windows."""

from .base import DecoderAdapter
from .trtllm import TrtllmLayout


class Qwen2Trtllm(TrtllmLayout):
    architecture = "Qwen2ForCausalLM"

    def config_fields(self, config) -> dict:
        return {"qwen_type": "qwen2", "attn_bias": True, "mlp_bias": False}


class Qwen2Adapter(DecoderAdapter):
    model_types = ("qwen2",)
    static_features = frozenset({"qkv_bias"})
    trtllm = Qwen2Trtllm

    def update_config(self, config, kept_layers: list[int]) -> None:
        super().update_config(config, kept_layers)
        # layer_types is now explicit; keep max_window_layers from re-deriving a different pattern.
        if getattr(config, "max_window_layers", None) is not None:
            config.max_window_layers = min(config.max_window_layers, len(kept_layers))
