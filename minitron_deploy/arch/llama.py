"""Llama 2 / 3.x (rope scaling lives in the config and is untouched), SmolLM2: the base layout,
exported to TensorRT-LLM as ``LlamaForCausalLM``."""

from .base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    model_types = ("llama",)
