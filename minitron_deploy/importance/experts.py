"""Mixture-of-experts importance from the calibration pass, by forward hooks on each sparse
layer's experts module, which receives the model's own routing (token rows, top-k expert ids
and their weights):

- ``experts.{i}`` (``[E]``, higher = keep), by ``expert_criterion``: ``reap`` (REAP: the
  router weight times the L2 norm of the expert's output, averaged over the tokens routed to
  it), ``frequency`` (the fraction of tokens routed to it) or ``random`` (seeded U(0, 1)).
- ``expert_mlp.{i}`` (``[E, I]``): the Minitron activation score inside each expert, the mean
  of ``|act(gate) * up|`` per neuron over the tokens routed to it (the width criterion
  ``activation``; ``magnitude`` and ``random`` compute theirs from the weights or a seed).
- ``expert_load.{i}`` (``[E]``): each expert's share of the routed tokens (sums to 1), the
  utilisation the prune report shows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter
from ..core.errors import MinitronError


@dataclass
class Routed:
    """The tokens one expert got in one forward: their rows, routing weights, the expert's
    intermediate activation ``[n, I]`` and its (unweighted) output ``[n, H]``."""

    expert: int
    rows: torch.Tensor
    weights: torch.Tensor
    activation: torch.Tensor
    output: torch.Tensor


def routed(experts: nn.Module, hidden: torch.Tensor, index: torch.Tensor,
           weights: torch.Tensor) -> Iterator[Routed]:
    """Each expert's share of one call of a transformers experts module, recomputed as its
    eager forward does (the family's ``MoEAdapter.expert_forward``); ``hidden`` is
    ``[tokens, H]``, ``index`` / ``weights`` ``[tokens, top_k]``."""
    forward = get_adapter(experts.config).expert_forward
    for e in torch.unique(index).tolist():
        rows, pos = torch.where(index == e)
        act, out = forward(experts, e, hidden[rows])
        yield Routed(e, rows, weights[rows, pos], act, out)


_ARGS = ("hidden_states", "top_k_index", "top_k_weights")


class _LayerStats:
    def __init__(self, num_experts: int, ffn: int, device: torch.device) -> None:
        self.count = torch.zeros(num_experts, device=device)
        self.reap = torch.zeros(num_experts, device=device)
        self.activation = torch.zeros(num_experts, ffn, device=device)

    def to(self, device: torch.device) -> None:
        if self.count.device != device:
            self.count, self.reap, self.activation = (
                t.to(device) for t in (self.count, self.reap, self.activation))


class ExpertCollector:
    """Owns the hooks and sums of one expert-importance pass over a MoE model; with
    ``loads_only`` it counts the routed tokens alone (the utilisation of a pruned model)."""

    def __init__(self, model: nn.Module, loads_only: bool = False) -> None:
        self.adapter = get_adapter(model.config)
        self.model = model
        self.loads_only = loads_only
        shape = self.adapter.expert_shape(model.config)
        device = next(model.parameters()).device
        self.stats = {i: _LayerStats(shape.num_experts, shape.ffn, device)
                      for i, layer in enumerate(self.adapter.layers(model))
                      if self.adapter.is_sparse(layer)}

    def _hook(self, stats: _LayerStats):
        def hook(module, args, kwargs, output):
            values = dict(zip(_ARGS, args)) | {k: kwargs[k] for k in _ARGS if k in kwargs}
            hidden, index, weights = (values[k] for k in _ARGS)
            stats.to(index.device)  # layer-by-layer calibration runs each layer on the device
            stats.count += torch.bincount(index.reshape(-1), minlength=len(stats.count))
            if self.loads_only:
                return
            for part in routed(module, hidden, index, weights):
                stats.reap[part.expert] += (part.weights.float()
                                            * part.output.float().norm(dim=-1)).sum()
                stats.activation[part.expert] += part.activation.float().abs().sum(0)
        return hook

    @contextmanager
    def attached(self):
        """Register every hook for the duration of the block."""
        layers = self.adapter.layers(self.model)
        handles = [self.adapter.experts(layers[i]).register_forward_hook(
            self._hook(stats), with_kwargs=True) for i, stats in self.stats.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def loads(self) -> dict[int, torch.Tensor]:
        """Per sparse layer, each expert's share of the routed tokens (sums to 1)."""
        if any(s.count.sum() == 0 for s in self.stats.values()):
            raise MinitronError("the calibration pass routed no token through the experts")
        return {i: (s.count / s.count.sum()).cpu() for i, s in self.stats.items()}

    def activation_scores(self) -> dict[str, torch.Tensor]:
        """``expert_mlp.{i}``: mean |activation| per neuron over each expert's routed tokens."""
        self.loads()
        return {f"expert_mlp.{i}": _mean(s.activation, s.count).cpu()
                for i, s in self.stats.items()}

    def expert_scores(self, criterion: str, seed: int) -> dict[str, torch.Tensor]:
        """``experts.{i}`` by ``criterion`` and ``expert_load.{i}`` for every sparse layer."""
        gen = torch.Generator().manual_seed(seed)
        out: dict[str, torch.Tensor] = {}
        for i, load in self.loads().items():
            out[f"expert_load.{i}"] = load
            if criterion == "reap":
                out[f"experts.{i}"] = _mean(self.stats[i].reap, self.stats[i].count).cpu()
            elif criterion == "frequency":
                out[f"experts.{i}"] = load.clone()  # its own storage: safetensors refuses shared
            else:
                out[f"experts.{i}"] = torch.rand(len(load), generator=gen)
        if not all(torch.isfinite(v).all() for v in out.values()):
            raise MinitronError("non-finite expert outputs during calibration (NaN/Inf): check "
                                "the checkpoint and try --dtype fp32")
        return out


def _mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total`` per routed token (rows of experts that got none: 0)."""
    count = count.reshape(-1, *([1] * (total.dim() - 1)))
    return total / count.clamp(min=1)


def expert_loads(model: nn.Module, batches: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Each sparse layer's expert shares of the routed tokens of ``batches`` (cache-free)."""
    collector = ExpertCollector(model, loads_only=True)
    device = next(model.parameters()).device
    with collector.attached(), torch.no_grad():
        for ids in batches:
            model(input_ids=ids.to(device), use_cache=False)
    return collector.loads()


def describe_loads(loads: dict[int, list[float]]) -> str:
    """``"6 experts, 4.2%-31.0% of the routed tokens each"`` (extremes over every layer)."""
    shares = [share for layer in loads.values() for share in layer]
    per_layer = len(next(iter(loads.values())))
    return f"{per_layer} experts, {min(shares):.1%}-{max(shares):.1%} of the routed tokens each"
