"""Rank units by importance and pick the kept indices for a resolved target shape."""

from __future__ import annotations

import torch

from ..core.errors import MinitronError
from ..core.shape import ModelShape
from ..importance.scores import ImportanceScores
from .target import ResolvedTarget
from .trim import KeepPlan


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in ascending index order (ties: lower index wins)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:k].sort().values


def choose_dropped_block(scores: ImportanceScores, metric: str, block_size: int) -> list[int]:
    """The contiguous block of ``block_size`` layers whose removal matters least."""
    block = scores.depth(metric, block_size)
    if block is None:
        raise MinitronError(f"the scores hold no '{metric}' depth scores for blocks of "
                            f"{block_size} layers; rescore with --depth-metric {metric} or pass "
                            "--drop-layers")
    start = int(torch.argmin(block))
    return list(range(start, start + block_size))


def build_plan(scores: ImportanceScores, source: ModelShape, target: ResolvedTarget,
               depth_metric: str = "loss") -> KeepPlan:
    """Kept indices on every axis for ``target`` (uniform across layers, GQA-aware)."""
    shape = target.shape
    if target.drop_layers is not None:
        dropped = target.drop_layers
    elif shape.num_layers < source.num_layers:
        dropped = choose_dropped_block(scores, depth_metric, source.num_layers - shape.num_layers)
    else:
        dropped = []
    layers = [i for i in range(source.num_layers) if i not in set(dropped)]
    needs_width = (shape.hidden_size, shape.ffn_hidden_size, shape.num_heads, shape.num_kv_heads) \
        != (source.hidden_size, source.ffn_hidden_size, source.num_heads, source.num_kv_heads)
    experts, expert_mlp = _expert_plan(scores, layers, target)
    shared_mlp = _shared_plan(scores, layers, target)
    if (needs_width or experts or shared_mlp) and not scores.has_width():
        raise MinitronError("width pruning needs width scores; the scores file has none")
    if not needs_width:
        return KeepPlan(layers=layers, hidden=torch.arange(source.hidden_size),
                        mlp={i: torch.arange(source.ffn_hidden_size) for i in layers},
                        heads={i: torch.arange(source.num_heads) for i in layers},
                        kv_heads={i: torch.arange(source.num_kv_heads) for i in layers},
                        experts=experts, expert_mlp=expert_mlp, shared_mlp=shared_mlp)

    group = source.num_heads // source.num_kv_heads
    per_group = shape.num_heads // shape.num_kv_heads
    mlp, heads, kv_heads = {}, {}, {}
    for i in layers:
        if f"mlp.{i}" in scores.tensors:  # dense layers
            mlp[i] = top_k(scores.tensors[f"mlp.{i}"], shape.ffn_hidden_size)
        kv_heads[i] = top_k(scores.tensors[f"kv_heads.{i}"], shape.num_kv_heads)
        head_scores = scores.tensors[f"heads.{i}"].view(source.num_kv_heads, group)
        heads[i] = torch.cat([g * group + top_k(head_scores[g], per_group) for g in kv_heads[i]])
    return KeepPlan(layers=layers, hidden=top_k(scores.tensors["hidden"], shape.hidden_size),
                    mlp=mlp, heads=heads, kv_heads=kv_heads, experts=experts,
                    expert_mlp=expert_mlp, shared_mlp=shared_mlp)


def _shared_plan(scores: ImportanceScores, layers: list[int], target: ResolvedTarget
                 ) -> dict[int, torch.Tensor]:
    """The top ``shared_mlp.{i}`` neurons of every kept layer's shared expert when the target
    narrows it (empty otherwise)."""
    wanted = target.experts
    if wanted is None or wanted.shared_ffn == target.experts_before.shared_ffn:
        return {}
    sparse = [i for i in layers if f"expert_mlp.{i}" in scores.tensors]
    held = [i for i in sparse if f"shared_mlp.{i}" in scores.tensors]
    if len(held) < len(sparse):
        raise MinitronError("shared-expert pruning needs shared_mlp scores; the scores file "
                            "has none (rescore this model)")
    return {i: top_k(scores.tensors[f"shared_mlp.{i}"], wanted.shared_ffn) for i in held}


def _expert_plan(scores: ImportanceScores, layers: list[int], target: ResolvedTarget
                 ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Kept experts (top ``experts.{i}``) of every kept sparse layer and, of each, its top
    neurons (its row of ``expert_mlp.{i}``); empty when the target keeps every expert whole."""
    wanted = target.experts
    sparse = [i for i in layers if f"expert_mlp.{i}" in scores.tensors]
    if wanted is None or not sparse or tuple(scores.tensors[f"expert_mlp.{sparse[0]}"].shape) \
            == (wanted.num_experts, wanted.ffn):
        return {}, {}
    experts, expert_mlp = {}, {}
    for i in sparse:
        neurons = scores.tensors[f"expert_mlp.{i}"]
        if f"experts.{i}" not in scores.tensors:
            raise MinitronError("expert pruning needs expert scores; the scores file has none")
        experts[i] = top_k(scores.tensors[f"experts.{i}"], wanted.num_experts)
        expert_mlp[i] = torch.stack([top_k(neurons[e], wanted.ffn) for e in experts[i]])
    return experts, expert_mlp
