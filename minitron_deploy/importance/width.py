"""Width importance from one calibration pass: MLP neurons, attention heads, KV groups and
embedding channels, all collected by forward hooks at once (activation-based, forward only).

- MLP neurons: the input of ``down_proj`` (the intermediate activation), in dense layers
  (sparse MoE layers are scored by ``experts.ExpertCollector``) and in a shared expert every
  token goes through (Qwen2-MoE: ``shared_mlp.{i}``).
- Attention heads: the L2 norm over ``head_dim`` of each head's output, i.e. the input of
  ``o_proj`` split per head. A KV group scores the L2 norm of its query heads' scores.
- Embedding channels: the output of every residual-stream norm, aggregated per norm and summed
  over all norms (layers).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from ..arch import get_adapter
from ..core.errors import MinitronError
from .aggregate import BatchAccumulator, reduce_sequence


class WidthCollector:
    """Owns the hooks and accumulators of one width-importance pass."""

    def __init__(self, model: nn.Module, seq_agg: str = "mean", batch_agg: str = "l2") -> None:
        self.model = model
        self.adapter = get_adapter(model.config)
        self.seq_agg, self.batch_agg = seq_agg, batch_agg
        cfg = model.config
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        layers = self.adapter.layers(model)
        self.mlp = {i: BatchAccumulator(batch_agg) for i, layer in enumerate(layers)
                    if not self.adapter.is_sparse(layer)}
        shared = getattr(self.adapter, "shared_expert_output_proj", None)
        self.shared = {i: (shared(layer), BatchAccumulator(batch_agg))
                       for i, layer in enumerate(layers)
                       if shared is not None and self.adapter.is_sparse(layer)}
        self.heads = [BatchAccumulator(batch_agg) for _ in layers]
        self.norms = [BatchAccumulator(batch_agg) for _ in self.adapter.residual_norms(model)]
        self._handles: list = []

    def _stat(self, x: torch.Tensor) -> torch.Tensor:
        # No per-call finiteness check: it would sync the GPU in every hook. NaN/Inf propagate
        # into the accumulated sums, which scores() checks once.
        return reduce_sequence(x.detach(), self.seq_agg)

    def _input_hook(self, acc: BatchAccumulator, per_head: bool) -> Callable:
        def hook(module, args, output):
            x = args[0]
            if x.dim() == 2:  # tokens flattened (a shared expert's): one sequence per batch
                x = x.unsqueeze(0)
            if per_head:  # [B, S, H*D] -> per-head L2 norm [B, S, H]
                x = torch.linalg.vector_norm(x.unflatten(-1, (-1, self.head_dim)), 2, dim=-1,
                                             dtype=torch.float32)
            acc.add(self._stat(x))
        return hook

    def _output_hook(self, acc: BatchAccumulator) -> Callable:
        def hook(module, args, output):
            acc.add(self._stat(output))
        return hook

    @contextmanager
    def attached(self):
        """Register every hook for the duration of the block."""
        adapter = self.adapter
        try:
            for i, (layer, head_acc) in enumerate(zip(adapter.layers(self.model), self.heads)):
                if i in self.mlp:
                    self._handles.append(adapter.mlp_output_proj(layer).register_forward_hook(
                        self._input_hook(self.mlp[i], per_head=False)))
                self._handles.append(adapter.attention_output_proj(layer).register_forward_hook(
                    self._input_hook(head_acc, per_head=True)))
            for proj, acc in self.shared.values():
                self._handles.append(proj.register_forward_hook(
                    self._input_hook(acc, per_head=False)))
            for norm, acc in zip(adapter.residual_norms(self.model), self.norms):
                self._handles.append(norm.register_forward_hook(self._output_hook(acc)))
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def scores(self) -> dict[str, torch.Tensor]:
        """``mlp.{i}`` per dense layer, ``heads.{i}``, ``kv_heads.{i}`` per layer and ``hidden``,
        on CPU."""
        try:
            out: dict[str, torch.Tensor] = {}
            group = self.num_heads // self.num_kv_heads
            for i, mlp in self.mlp.items():
                out[f"mlp.{i}"] = mlp.result().cpu()
            for i, (_, acc) in self.shared.items():
                out[f"shared_mlp.{i}"] = acc.result().cpu()
            for i, heads in enumerate(self.heads):
                head_scores = heads.result().cpu()
                out[f"heads.{i}"] = head_scores
                out[f"kv_heads.{i}"] = head_scores.view(self.num_kv_heads, group).norm(dim=1)
            out["hidden"] = torch.stack([n.result() for n in self.norms]).sum(0).cpu()
        except RuntimeError:
            raise MinitronError("the calibration pass saw no data: the forward loop ran no batch")
        if not all(torch.isfinite(v).all() for v in out.values()):
            raise MinitronError("non-finite activations during calibration (NaN/Inf): check the "
                                "checkpoint and try --dtype fp32")
        return out


def width_importance(model: nn.Module, forward_loop: Callable[[nn.Module], None],
                     seq_agg: str = "mean", batch_agg: str = "l2") -> dict[str, torch.Tensor]:
    """Score every width axis from one run of ``forward_loop(model)``."""
    collector = WidthCollector(model, seq_agg, batch_agg)
    with collector.attached(), torch.no_grad():
        forward_loop(model)
    return collector.scores()
