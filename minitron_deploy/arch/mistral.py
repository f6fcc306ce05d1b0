"""Mistral: the Llama layout with optional sliding-window attention."""

from .base import DecoderAdapter


class MistralAdapter(DecoderAdapter):
    model_types = ("mistral",)
