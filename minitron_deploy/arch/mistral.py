"""Mistral: the Llama layout with optional sliding-window attention."""

from .base import DecoderAdapter
from .trtllm import TrtllmLayout


class MistralTrtllm(TrtllmLayout):
    architecture = "MistralForCausalLM"


class MistralAdapter(DecoderAdapter):
    model_types = ("mistral",)
    trtllm = MistralTrtllm
