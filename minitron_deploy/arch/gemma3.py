"""Gemma 3 text models (``Gemma3ForCausalLM``, ``gemma3_text``): the Gemma 2 layout without
soft-capping by default, plus per-head (1 + w) RMSNorm on q and k and separate rope bases for
sliding and full layers (``rope_parameters`` per layer type)."""

from .gemma2 import Gemma2Adapter


class Gemma3Adapter(Gemma2Adapter):
    model_types = ("gemma3_text",)
    static_features = Gemma2Adapter.static_features | {"head_qk_norm", "local_rope"}
