"""Reference MoE layers for trimmed models: dropped experts masked in the router (their logits
at -inf before the softmax, so it runs over the kept experts only, as a router without their
rows does), dropped expert and shared-expert neurons zeroed (their ``down`` columns), dropped
hidden channels not written (``down`` rows and biases)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from minitron_deploy.arch import MoEAdapter
from minitron_deploy.pruning.trim import KeepPlan


class MaskedRouter(nn.Module):
    """The model's own router, run on the input plus one channel of ones whose router column
    is 0 for kept experts and -inf for dropped ones: dropped logits become -inf, kept ones are
    unchanged, and the family's own softmax / top-k / renormalisation does the rest."""

    def __init__(self, router: nn.Module, kept: torch.Tensor) -> None:
        super().__init__()
        self.inner = copy.deepcopy(router)
        extra = torch.full((router.weight.shape[0], 1), float("-inf"))
        extra[kept] = 0.0
        self.inner.weight = nn.Parameter(torch.cat([router.weight.data, extra], dim=1))
        self.inner.hidden_dim = router.weight.shape[1] + 1

    def forward(self, hidden_states: torch.Tensor):
        ones = hidden_states.new_ones(*hidden_states.shape[:-1], 1)
        return self.inner(torch.cat([hidden_states, ones], dim=-1))


def mask_experts(adapter: MoEAdapter, layer: nn.Module, plan: KeepPlan, i: int,
                 dropped_hidden: torch.Tensor) -> None:
    """Mask layer ``i``'s dropped experts, expert and shared-expert neurons and hidden writes
    (expert down biases included), in place, through the adapter's common expert layout."""
    w = adapter.get_experts(layer)
    num, ffn = w.num_experts, w.ffn
    kept = plan.experts.get(i, torch.arange(num))
    neurons = plan.expert_mlp.get(i, torch.arange(ffn).expand(len(kept), -1))
    w.down = w.down.clone()
    for e, row in zip(kept.tolist(), neurons):
        dropped = torch.ones(ffn, dtype=torch.bool)
        dropped[row] = False
        w.down[e][:, dropped] = 0
    w.down[:, dropped_hidden] = 0
    if w.down_bias is not None:
        w.down_bias = w.down_bias.clone()
        w.down_bias[:, dropped_hidden] = 0
    if w.shared is not None:
        keep = torch.zeros(w.shared.down.shape[1], dtype=torch.bool)
        keep[plan.shared_mlp.get(i, torch.arange(len(keep)))] = True
        w.shared.down = w.shared.down.clone()
        w.shared.down[:, ~keep] = 0
        w.shared.down[dropped_hidden] = 0
    with torch.no_grad():
        adapter.set_experts(layer, w)
    if len(kept) < num:
        router = adapter.router(layer)
        name = next(n for n, m in layer.mlp.named_children() if m is router)
        setattr(layer.mlp, name, MaskedRouter(router, kept))
