"""Architecture adapters, one file per model family, looked up by ``config.model_type``.

To add a family, write one adapter file (see ``base.DecoderAdapter``) and list its class here.
"""

from __future__ import annotations

from ..core.errors import MinitronError
from .base import AttentionWeights, DecoderAdapter, MLPWeights
from .features import FAST_PATH, FEATURES, describe
from .gemma2 import Gemma2Adapter
from .gemma3 import Gemma3Adapter
from .gpt_oss import GptOssAdapter
from .llama import LlamaAdapter
from .mistral import MistralAdapter
from .mixtral import MixtralAdapter
from .moe import ExpertShape, ExpertWeights, MoEAdapter
from .nemotron import NemotronAdapter
from .olmo2 import Olmo2Adapter
from .olmoe import OlmoeAdapter
from .phi3 import Phi3Adapter
from .qwen2 import Qwen2Adapter
from .qwen2_moe import Qwen2MoeAdapter
from .qwen3 import Qwen3Adapter
from .qwen3_moe import Qwen3MoeAdapter

_ADAPTERS: dict[str, type[DecoderAdapter]] = {
    model_type: cls
    for cls in (LlamaAdapter, MistralAdapter, Qwen2Adapter, Qwen3Adapter, Phi3Adapter,
                NemotronAdapter, Gemma2Adapter, Gemma3Adapter, Olmo2Adapter, Qwen3MoeAdapter,
                MixtralAdapter, OlmoeAdapter, Qwen2MoeAdapter, GptOssAdapter)
    for model_type in cls.model_types
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_ADAPTERS))


def support(model_type: str) -> str:
    """What a family supports, e.g. ``"llama: prune, export hf/onnx/trtllm, fast path, vllm"``
    (the fast path as far as the family's static features go; a config may still add some)."""
    cls = _ADAPTERS[model_type]
    formats = "hf/onnx" + ("/trtllm" if cls.trtllm is not None else "")
    parts = ["prune", f"export {formats}"]
    parts += ["fast path"] if cls.static_features <= FAST_PATH else []
    parts += ["vllm"] if cls.vllm else []
    return f"{model_type}: {', '.join(parts)}"


def get_adapter(config) -> DecoderAdapter:
    """The adapter for a transformers config (or anything with ``model_type``)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise MinitronError(f"unsupported architecture {model_type!r}; supported families: "
                            + "; ".join(support(t) for t in SUPPORTED_MODEL_TYPES))
    return _ADAPTERS[model_type]()


__all__ = ["FAST_PATH", "FEATURES", "SUPPORTED_MODEL_TYPES", "AttentionWeights", "DecoderAdapter",
           "ExpertShape", "ExpertWeights", "MLPWeights", "MoEAdapter", "describe", "get_adapter",
           "support"]
