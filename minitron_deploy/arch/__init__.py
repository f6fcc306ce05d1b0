"""Architecture adapters, one per model family, looked up by ``config.model_type``."""

from __future__ import annotations

from ..errors import MinitronError
from .base import AttentionWeights, DecoderAdapter, MLPWeights
from .llama import LlamaAdapter
from .mistral import MistralAdapter
from .nemotron import NemotronAdapter
from .phi3 import Phi3Adapter
from .qwen2 import Qwen2Adapter
from .qwen3 import Qwen3Adapter

_ADAPTERS: dict[str, type[DecoderAdapter]] = {
    model_type: cls
    for cls in (LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter, Phi3Adapter,
                NemotronAdapter)
    for model_type in cls.model_types
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_ADAPTERS))


def get_adapter(config) -> DecoderAdapter:
    """The adapter for a transformers config (or anything with ``model_type``)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise MinitronError(
            f"unsupported architecture {model_type!r}; supported families: "
            + ", ".join(SUPPORTED_MODEL_TYPES)
        )
    return _ADAPTERS[model_type]()


__all__ = ["AttentionWeights", "DecoderAdapter", "MLPWeights", "SUPPORTED_MODEL_TYPES",
           "get_adapter"]
