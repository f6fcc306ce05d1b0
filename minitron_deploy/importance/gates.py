"""Multiplicative per-unit gates applied by hooks, without touching any weight.

A gate of 1 leaves the model unchanged, 0 removes the unit, 1 + eps perturbs it:
- MLP neuron ``j`` of layer ``i``: scales channel ``j`` of ``down_proj``'s input;
- attention head ``h``: scales head ``h``'s slice of ``o_proj``'s input;
- embedding channel ``c``: scales channel ``c`` of every residual-stream norm's output.
Scaling a unit's activation by ``m`` equals scaling the weights that read it (``down_proj``
columns, ``o_proj`` columns, norm weights) by ``m``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..arch import get_adapter
from ..core.shape import ModelShape


class UnitGates:
    """Gates ``mlp [layers, ffn]``, ``heads [layers, heads]`` and ``hidden [hidden]`` (float32,
    on the model's device); edit them in place while :meth:`attached`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.adapter = get_adapter(model.config)
        shape = ModelShape.from_config(model.config)
        self.head_dim = shape.head_dim
        device = next(model.parameters()).device
        self.mlp = torch.ones(shape.num_layers, shape.ffn_hidden_size, device=device)
        self.heads = torch.ones(shape.num_layers, shape.num_heads, device=device)
        self.hidden = torch.ones(shape.hidden_size, device=device)

    def _mlp_hook(self, i: int):
        def hook(module, args):
            x = args[0]
            return (x * self.mlp[i].to(x.device, x.dtype),) + args[1:]
        return hook

    def _head_hook(self, i: int):
        def hook(module, args):
            x = args[0]
            gate = self.heads[i].to(x.device, x.dtype)[:, None]
            return ((x.unflatten(-1, (-1, self.head_dim)) * gate).flatten(-2),) + args[1:]
        return hook

    def _norm_hook(self, module, args, output):
        return output * self.hidden.to(output.device, output.dtype)

    @contextmanager
    def attached(self):
        adapter, handles = self.adapter, []
        try:
            for i, layer in enumerate(adapter.layers(self.model)):
                handles.append(adapter.mlp_output_proj(layer).register_forward_pre_hook(
                    self._mlp_hook(i)))
                handles.append(adapter.attention_output_proj(layer).register_forward_pre_hook(
                    self._head_hook(i)))
            for norm in adapter.residual_norms(self.model):
                handles.append(norm.register_forward_hook(self._norm_hook))
            yield self
        finally:
            for handle in handles:
                handle.remove()
