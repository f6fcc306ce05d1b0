"""Qwen2 / Qwen2.5: Llama layout with q/k/v biases; per-layer ``layer_types`` for sliding windows."""

from ..core.errors import MinitronError
from ..core.shape import ModelShape
from .base import DecoderAdapter
from .trtllm import TrtllmLayout


class Qwen2Trtllm(TrtllmLayout):
    architecture = "Qwen2ForCausalLM"
    dense_bias = False

    def config_fields(self, config) -> dict:
        return {"qwen_type": "qwen2", **self.bias_fields(config)}

    def hf_biases(self, config) -> tuple[bool, bool, bool]:
        return True, False, False  # transformers' Qwen2: q/k/v biases only


class Qwen2Adapter(DecoderAdapter):
    model_types = ("qwen2",)
    static_features = frozenset({"qkv_bias"})
    trtllm = Qwen2Trtllm

    def vllm_overrides(self, config) -> dict | None:
        """vLLM's Qwen2 derives head_dim from hidden_size / heads, which width or head pruning
        changes (the checkpoint keeps an explicit head_dim); its Llama reads head_dim, and Qwen2
        is Llama with q/k/v biases, so such checkpoints load as that."""
        shape = ModelShape.from_config(config)
        if shape.head_dim == shape.hidden_size // shape.num_heads:
            return None
        if getattr(config, "use_sliding_window", False):
            raise MinitronError("vLLM cannot load a Qwen2 checkpoint whose head_dim differs from "
                                "hidden_size / heads when it uses sliding-window attention")
        return {"architectures": ["LlamaForCausalLM"], "qkv_bias": True, "attention_bias": False}

    def update_config(self, config, kept_layers: list[int]) -> None:
        super().update_config(config, kept_layers)
        # layer_types is now explicit; keep max_window_layers from re-deriving a different pattern.
        if getattr(config, "max_window_layers", None) is not None:
            config.max_window_layers = min(config.max_window_layers, len(kept_layers))
