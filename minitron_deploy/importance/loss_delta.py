"""Loss-delta criterion (IFSO's idea at affordable granularity): the exact change of
the calibration LM loss when a unit is removed, without retraining.

Each unit is removed by zeroing its gate (:class:`UnitGates`): an attention head, a KV group
(all its query heads), a group of ``group_size`` consecutive MLP neurons or embedding channels
(every unit of a group gets the group's delta; ``group_size=1`` scores each alone). A layer's
delta is ``--depth-metric loss`` (the loss with the layer removed). Higher = removing the unit
hurts more; a negative delta means the loss improves without the unit. Costs one forward pass
over the batches per head, KV group and group of neurons/channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.shape import ModelShape
from .depth import lm_loss
from .gates import UnitGates


def _groups(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def loss_deltas(model: nn.Module, batches: Sequence[torch.Tensor],
                group_size: int = 1) -> dict[str, torch.Tensor]:
    """``mlp.i``, ``heads.i``, ``kv_heads.i``, ``hidden``: loss(without unit) - loss."""
    shape = ModelShape.from_config(model.config)
    gates = UnitGates(model)
    group = shape.num_heads // shape.num_kv_heads
    # (gate to zero, where in it, score tensor, where in it): one forward pass each
    masks: list[tuple[torch.Tensor, slice | int, torch.Tensor, slice | int]] = []
    out: dict[str, torch.Tensor] = {}
    for i in range(shape.num_layers):
        for key, n in (("mlp", shape.ffn_hidden_size), ("heads", shape.num_heads),
                       ("kv_heads", shape.num_kv_heads)):
            out[f"{key}.{i}"] = torch.empty(n)
        masks += [(gates.mlp[i], g, out[f"mlp.{i}"], g)
                  for g in _groups(shape.ffn_hidden_size, group_size)]
        masks += [(gates.heads[i], h, out[f"heads.{i}"], h)
                  for h in range(shape.num_heads)]
        masks += [(gates.heads[i], slice(g * group, (g + 1) * group),
                   out[f"kv_heads.{i}"], g) for g in range(shape.num_kv_heads)]
    out["hidden"] = torch.empty(shape.hidden_size)
    masks += [(gates.hidden, g, out["hidden"], g)
              for g in _groups(shape.hidden_size, group_size)]
    with gates.attached():
        base = lm_loss(model, batches)
        for gate, where, target, at in tqdm(masks, desc="loss-delta", unit="mask", leave=False):
            gate[where] = 0.0
            target[at] = lm_loss(model, batches) - base
            gate[where] = 1.0
    return out
