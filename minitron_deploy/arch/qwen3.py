"""Qwen3: Qwen2 layout plus per-head RMSNorm on q and k (over head_dim, so never trimmed)."""

from .qwen2 import Qwen2Adapter


class Qwen3Adapter(Qwen2Adapter):
    model_types = ("qwen3",)
