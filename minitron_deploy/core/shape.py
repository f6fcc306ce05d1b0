"""The prunable shape of a decoder and its parameter count."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from transformers import AutoModelForCausalLM


@dataclass(frozen=True)
class ModelShape:
    """Uniform width/depth of a decoder (every layer has the same shape)."""

    hidden_size: int
    ffn_hidden_size: int
    num_heads: int
    num_kv_heads: int
    num_layers: int
    head_dim: int

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        heads = config.num_attention_heads
        return cls(
            hidden_size=config.hidden_size,
            ffn_hidden_size=config.intermediate_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            num_layers=config.num_hidden_layers,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        )

    def apply_to_config(self, config) -> None:
        """Write this shape into a transformers config (head_dim always explicit)."""
        config.hidden_size = self.hidden_size
        config.intermediate_size = self.ffn_hidden_size
        config.num_attention_heads = self.num_heads
        config.num_key_value_heads = self.num_kv_heads
        config.num_hidden_layers = self.num_layers
        config.head_dim = self.head_dim

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def reshaped_config(config, shape: ModelShape):
    """A copy of ``config`` describing ``shape`` (layer_types cut to the new depth)."""
    config = copy.deepcopy(config)
    shape.apply_to_config(config)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[: shape.num_layers]
    return config


def loadability_error(config, shape: ModelShape) -> str | None:
    """Why stock transformers would refuse a config of this shape (e.g. Llama's
    hidden_size % num_attention_heads rule), or None if it accepts it."""
    validate = getattr(reshaped_config(config, shape), "validate", None)
    if validate is None:
        return None
    try:
        validate()
    except Exception as exc:  # transformers wraps validation errors in several types
        return str(exc.__cause__ or exc).strip().splitlines()[-1]
    return None


def count_params(config, shape: ModelShape | None = None) -> int:
    """Exact parameter count of the model ``config`` describes (reshaped to ``shape``).

    Built on the meta device, so it is exact for every family (biases, fused layouts, tied
    embeddings counted once) and costs no memory.
    """
    if shape is not None:
        config = reshaped_config(config, shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
