"""Magnitude criterion: the L2 norm of the weights (and biases) that belong to each unit.

- MLP neuron: its ``gate``/``up`` rows and ``down`` column.
- Attention head: its ``q`` rows and ``o`` columns.
- KV group: its ``k``/``v`` rows plus the weights of its query heads.
- Embedding channel: its embedding (and untied ``lm_head``) column, the column of every
  projection reading the residual stream (q, k, v, gate, up) and the row of every projection
  writing it (o, down). Norm weights are per-channel scales, not counted.
- Expert neuron (``expert_mlp.i``, ``[E, I]``): its gate/up rows and down column in its expert;
  the router's columns and every expert's gate/up columns and down rows count for the
  embedding channels. A shared expert's neuron (``shared_mlp.i``) as an MLP neuron.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import get_adapter
from ..core.shape import ModelShape


def _sq(t: torch.Tensor | None, dim: int | tuple[int, ...] | None = None) -> torch.Tensor | float:
    """Squares of ``t`` summed over ``dim`` (elementwise if None); 0 for a missing bias/gate."""
    if t is None:
        return 0.0
    sq = t.float().pow(2)
    return sq if dim is None else sq.sum(dim)


def _per_head(w: torch.Tensor, b: torch.Tensor | None, n: int, d: int) -> torch.Tensor:
    """Squared norm of each head's ``d`` rows of ``w`` (``[n * d, in]``) and bias."""
    return _sq(w.view(n, d, -1), (1, 2)) + (0.0 if b is None else _sq(b.view(n, d), 1))


def weight_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """``mlp.i`` (``expert_mlp.i`` in sparse layers), ``heads.i``, ``kv_heads.i`` and
    ``hidden``: per-unit weight L2 norms."""
    adapter, shape = get_adapter(model.config), ModelShape.from_config(model.config)
    d, group = shape.head_dim, shape.num_heads // shape.num_kv_heads
    embed, head = adapter.embed_tokens(model).weight, adapter.lm_head(model).weight
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        hidden = _sq(embed, 0) + (0.0 if head is embed else _sq(head, 0))
        for i, layer in enumerate(adapter.layers(model)):
            a = adapter.get_attention(layer)
            heads = _per_head(a.q, a.q_bias, shape.num_heads, d) \
                + _sq(a.o.view(-1, shape.num_heads, d), (0, 2))
            kv = _per_head(a.k, a.k_bias, shape.num_kv_heads, d) \
                + _per_head(a.v, a.v_bias, shape.num_kv_heads, d) \
                + heads.view(shape.num_kv_heads, group).sum(1)
            hidden = hidden + _sq(a.q, 0) + _sq(a.k, 0) + _sq(a.v, 0) + _sq(a.o, 1) + _sq(a.o_bias)
            out[f"heads.{i}"], out[f"kv_heads.{i}"] = heads, kv
            if adapter.is_sparse(layer):
                e = adapter.get_experts(layer)
                gate, up = _sq(e.gate_up, 2).chunk(2, dim=1)
                out[f"expert_mlp.{i}"] = gate + up + _sq(e.down, 1)
                hidden = hidden + _sq(e.router, 0) + _sq(e.gate_up, (0, 1)) + _sq(e.down, (0, 2))
                if e.shared is not None:  # a shared expert: scored as a dense MLP
                    s = e.shared
                    out[f"shared_mlp.{i}"] = _sq(s.up, 1) + _sq(s.gate, 1) + _sq(s.down, 0)
                    hidden = hidden + _sq(s.up, 0) + _sq(s.gate, 0) + _sq(s.down, 1)
                continue
            m = adapter.get_mlp(layer)
            out[f"mlp.{i}"] = _sq(m.up, 1) + _sq(m.gate, 1) + _sq(m.down, 0) + _sq(m.up_bias) \
                + _sq(m.gate_bias)
            hidden = hidden + _sq(m.up, 0) + _sq(m.gate, 0) + _sq(m.down, 1) + _sq(m.down_bias)
    out["hidden"] = hidden
    return {k: v.sqrt().cpu() for k, v in out.items()}
