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


def _meta_model(config, shape: ModelShape | None):
    if shape is not None:
        config = reshaped_config(config, shape)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def count_params(config, shape: ModelShape | None = None) -> int:
    """Exact parameter count of the model ``config`` describes (reshaped to ``shape``).

    Built on the meta device, so it is exact for every family (biases, fused layouts, tied
    embeddings counted once) and costs no memory.
    """
    return sum(p.numel() for p in _meta_model(config, shape).parameters())


@dataclass(frozen=True)
class ParamCounts:
    """Total and active parameters of a model, and those of its routed experts.

    ``active`` counts what one token's forward pass uses: the embeddings and the LM head (a
    tied embedding once), attention, norms, routers, dense MLPs and shared experts whole, and
    ``top_k`` of the ``E`` routed experts of every sparse layer (each expert's weights and
    biases are its slice of the experts' ``[E, ...]`` tensors). ModelOpt calls the constraint
    on it ``active_params``. A dense model has ``active == total`` and ``experts == 0``."""

    total: int
    active: int
    experts: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def expert_parameters(model, num_experts: int | None) -> list[torch.Tensor]:
    """The routed experts' tensors: parameters of transformers' ``experts`` modules that lead
    with the expert axis (every supported MoE family keeps them so); none for a dense model."""
    if not num_experts:
        return []
    return [p for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == "experts"
            for p in module.parameters() if p.shape[0] == num_experts]


def param_counts(config, shape: ModelShape | None = None) -> ParamCounts:
    """:class:`ParamCounts` of the model ``config`` describes (reshaped to ``shape``), exact
    (built on the meta device)."""
    model = _meta_model(config, shape)
    total = sum(p.numel() for p in model.parameters())
    num, top_k = getattr(config, "num_experts", None), getattr(config, "num_experts_per_tok", None)
    experts = sum(p.numel() for p in expert_parameters(model, num))
    return ParamCounts(total=total, active=active_params(total, experts, num, top_k),
                       experts=experts)


def active_params(total: int, experts: int, num_experts: int | None,
                  top_k: int | None) -> int:
    """Parameters one token uses: ``total`` less the ``experts``' parameters of the routed
    experts it does not use (``num_experts - top_k`` of every ``num_experts``)."""
    if not num_experts:
        return total
    return total - experts * (num_experts - min(top_k, num_experts)) // num_experts
