"""Random criterion: uniform scores from a seeded generator, the baseline every criterion
must beat. The same seed and shape always give the same scores."""

from __future__ import annotations

import torch
from torch import nn

from ..arch import get_adapter
from ..core.shape import ModelShape


def random_scores(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``mlp.i`` (``expert_mlp.i``, ``[E, I]``, in sparse layers), ``heads.i``, ``kv_heads.i``
    and ``hidden`` drawn from U(0, 1)."""
    shape = ModelShape.from_config(model.config)
    adapter = get_adapter(model.config)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(adapter.layers(model)):
        if adapter.is_sparse(layer):
            e = adapter.get_experts(layer)
            out[f"expert_mlp.{i}"] = torch.rand(e.num_experts, e.ffn, generator=gen)
            if e.shared is not None:
                out[f"shared_mlp.{i}"] = torch.rand(e.shared.up.shape[0], generator=gen)
        else:
            out[f"mlp.{i}"] = torch.rand(shape.ffn_hidden_size, generator=gen)
        out[f"heads.{i}"] = torch.rand(shape.num_heads, generator=gen)
        out[f"kv_heads.{i}"] = torch.rand(shape.num_kv_heads, generator=gen)
    out["hidden"] = torch.rand(shape.hidden_size, generator=gen)
    return out
