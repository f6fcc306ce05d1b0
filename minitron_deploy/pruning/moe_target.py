"""Mixture-of-experts targets: the experts to keep, checked, and the budget rule.

A parameter budget (``target_params`` on the total, ``target_active_params`` on what a token
uses, see :class:`~minitron_deploy.core.shape.ParamCounts`; both may be given) is met by a
fixed rule, cheapest cut first:

1. experts (a total budget only; they cost no active parameters): as few removed as meet it,
   down to a floor of half of them, never fewer than twice the experts per token (so top-k
   stays);
2. then width by the paper's rule: expert width, the shared expert's and the dense MLPs' width
   at one rate, hidden at 0.7x that rate (families whose heads x head_dim must equal the hidden
   size, OLMoE, keep hidden), in multiples of 8 for the grouped expert kernels;
3. query heads per KV group last, as for dense models.

Sizes given explicitly stay as given. Scores then pick which experts and neurons go.
``spec`` below is a :class:`~minitron_deploy.pruning.target.TargetSpec`.
"""

from __future__ import annotations

import dataclasses
import math

from ..arch import ExpertShape, MoEAdapter, get_adapter
from ..core.align import Alignment
from ..core.errors import MinitronError
from ..core.schema import Schema
from ..core.shape import ModelShape, ParamCounts, param_counts
from .rule import (
    _FFN_STEP_CAP,
    _HIDDEN_STEP_CAP,
    _STEPS,
    HIDDEN_TO_MLP_RATE,
    MAX_MLP_PRUNE,
    _loadable_hidden,
    pruned_axes,
    round_to_step,
    search_step,
)

#: transformers' grouped expert kernels need 16-byte strides: sizes in multiples of 8 (bf16).
EXPERT_ALIGN = 8
_EXPERT_FIELDS = ("num_experts", "moe_ffn_hidden_size", "shared_expert_ffn_hidden_size")


def expert_floor(src: ExpertShape) -> int:
    """The fewest experts the budget rule keeps: half, at least twice top-k (at most all)."""
    return min(src.num_experts, max(2 * src.top_k, math.ceil(src.num_experts / 2)))


def expert_target(config, spec: Schema) -> ExpertShape | None:
    """The experts the explicit sizes keep (None for dense models), checked."""
    adapter = get_adapter(config)
    if not isinstance(adapter, MoEAdapter):
        given = [name for name in _EXPERT_FIELDS if getattr(spec, name) is not None]
        if given:
            raise MinitronError(f"{', '.join(given)} apply to mixture-of-experts models; "
                                f"{config.model_type} has no experts")
        return None
    if adapter.experts_are_ffn and spec.ffn_hidden_size is not None:
        raise MinitronError(f"every MLP of {config.model_type} is a mixture of experts: give "
                            "moe_ffn_hidden_size, not ffn_hidden_size")
    src = adapter.expert_shape(config)
    if spec.shared_expert_ffn_hidden_size is not None and src.shared_ffn is None:
        raise MinitronError(f"shared_expert_ffn_hidden_size: {config.model_type} has no "
                            "shared expert")
    for name, value, full in zip(_EXPERT_FIELDS, (spec.num_experts, spec.moe_ffn_hidden_size,
                                                  spec.shared_expert_ffn_hidden_size),
                                 (src.num_experts, src.ffn, src.shared_ffn)):
        if value is not None and value > full:
            raise MinitronError(f"target {name}={value} is larger than the source ({full}); "
                                "pruning only shrinks")
    num = spec.num_experts or src.num_experts
    return ExpertShape(num_experts=num, ffn=spec.moe_ffn_hidden_size or src.ffn,
                       top_k=min(src.top_k, num),
                       shared_ffn=spec.shared_expert_ffn_hidden_size or src.shared_ffn)


def expert_note(src: ExpertShape, target: ExpertShape) -> str:
    """What the reason adds about the experts ("" when they are kept)."""
    notes = [f"{label} {before} -> {after}" for label, before, after in (
        ("experts", src.num_experts, target.num_experts),
        ("expert width", src.ffn, target.ffn),
        ("shared expert width", src.shared_ffn or 0, target.shared_ffn or 0),
        ("experts per token (fewer experts remain)", src.top_k, target.top_k)) if after < before]
    return "; " + ", ".join(notes) if notes else ""


def check_expert_kernels(shape: ModelShape, experts: ExpertShape) -> None:
    bad = {name: value for name, value in (
        ("hidden_size", shape.hidden_size), ("moe_ffn_hidden_size", experts.ffn),
        ("shared_expert_ffn_hidden_size", experts.shared_ffn or 0)) if value % EXPERT_ALIGN}
    if bad:
        raise MinitronError(f"transformers' grouped expert kernels need hidden_size and "
                            f"expert widths in multiples of {EXPERT_ALIGN}; got "
                            + ", ".join(f"{k}={v}" for k, v in bad.items()))


class _Budget:
    """The budgets (None: not given) and the counts of candidate shapes, cached."""

    def __init__(self, config, total: int | None, active: int | None) -> None:
        self.config, self.total, self.active = config, total, active
        self.adapter = get_adapter(config)
        self._counts: dict[tuple[ModelShape, ExpertShape], ParamCounts] = {}

    def counts(self, shape: ModelShape, experts: ExpertShape) -> ParamCounts:
        if (shape, experts) not in self._counts:
            self._counts[shape, experts] = param_counts(
                self.adapter.with_expert_shape(self.config, experts), shape)
        return self._counts[shape, experts]

    def fits(self, shape: ModelShape, experts: ExpertShape, total_only: bool = False) -> bool:
        counts = self.counts(shape, experts)
        return (self.total is None or counts.total <= self.total) and (
            total_only or self.active is None or counts.active <= self.active)

    def describe(self) -> str:
        parts = [f"{value:,} {label}" for value, label in ((self.total, "total"),
                                                           (self.active, "active")) if value]
        return " and ".join(parts) + " parameters"


def _aligned(full: int, align: int) -> int:
    """``align`` fitted to ``full`` as :class:`Alignment` fits it (the largest power of two
    dividing both when ``full`` is not a multiple), times the expert kernels' 8."""
    common = math.gcd(full, align)
    return math.lcm(align if full % align == 0 else common & -common, EXPERT_ALIGN)


def expert_width_step(full: int, align: int) -> int:
    """The rule's (and the search's) step for an expert width of ``full`` neurons."""
    return search_step(full, _FFN_STEP_CAP, _aligned(full, align))


def _fewest_experts(budget: _Budget, base: ModelShape, src: ExpertShape,
                    experts: ExpertShape) -> ExpertShape:
    """Rule step 1: the most experts (down to the floor) whose total meets the budget; the
    floor when none does. The total falls by the same count per expert removed (its tensors
    and router row in every sparse layer), so two counts give it exactly."""
    floor = dataclasses.replace(experts, num_experts=expert_floor(src))
    full = budget.counts(base, experts).total
    if full <= budget.total or floor == experts:
        return experts
    per_expert = (full - budget.counts(base, floor).total) // (experts.num_experts
                                                               - floor.num_experts)
    num = experts.num_experts - math.ceil((full - budget.total) / per_expert)
    return dataclasses.replace(experts, num_experts=max(floor.num_experts, num))


def _width(budget: _Budget, src: ModelShape, base: ModelShape, src_ex: ExpertShape,
           experts: ExpertShape, spec: Schema, align: Alignment
           ) -> tuple[ModelShape, ExpertShape] | None:
    """Rule step 2: least width pruning meeting the budget at ``base``'s heads (None: none)."""
    config, adapter = budget.config, budget.adapter
    dense = len(adapter.sparse_layers(config)) < src.num_layers and not adapter.experts_are_ffn
    hidden_align = math.lcm(align.hidden, EXPERT_ALIGN)
    hidden_step = math.lcm(search_step(src.hidden_size, _HIDDEN_STEP_CAP, align.hidden),
                           EXPERT_ALIGN)
    smaller = dataclasses.replace(base, hidden_size=base.hidden_size - hidden_step)
    free_hidden = spec.hidden_size is None and not adapter.shape_error(config, smaller)

    def step_of(full: int) -> int:
        return expert_width_step(full, align.ffn)

    def width_at(s: float) -> tuple[ModelShape, ExpertShape] | None:
        ex = dataclasses.replace(
            experts, ffn=spec.moe_ffn_hidden_size or round_to_step(src_ex.ffn * (1 - s),
                                                                    step_of(src_ex.ffn)),
            shared_ffn=spec.shared_expert_ffn_hidden_size or (
                src_ex.shared_ffn and round_to_step(src_ex.shared_ffn * (1 - s),
                                                    step_of(src_ex.shared_ffn))))
        ffn = ex.ffn if adapter.experts_are_ffn else spec.ffn_hidden_size or (
            round_to_step(src.ffn_hidden_size * (1 - s), step_of(src.ffn_hidden_size))
            if dense else base.ffn_hidden_size)
        shape = dataclasses.replace(base, ffn_hidden_size=ffn)
        if free_hidden:
            shape = dataclasses.replace(shape, hidden_size=round_to_step(
                src.hidden_size * (1 - HIDDEN_TO_MLP_RATE * s), hidden_step))
            hidden = _loadable_hidden(config, shape, hidden_align, src.hidden_size)
            if hidden is None:
                return None
            shape = dataclasses.replace(shape, hidden_size=hidden)
        return shape, ex

    def fits(step: int) -> bool:
        found = width_at(MAX_MLP_PRUNE * step / _STEPS)
        return found is not None and budget.fits(*found)

    if not fits(_STEPS):
        return None
    low, high = 0, _STEPS  # parameter counts fall monotonically with the step: bisect
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid + 1, high)
    return width_at(MAX_MLP_PRUNE * low / _STEPS)


def moe_budget_shape(config, base: ModelShape, experts: ExpertShape, spec: Schema,
                     align: Alignment, total: int | None, active: int | None
                     ) -> tuple[ModelShape, ExpertShape, str]:
    """The rule's shape and experts meeting the budgets, and why (see the module's docstring)."""
    budget = _Budget(config, total, active)
    src, src_ex = ModelShape.from_config(config), get_adapter(config).expert_shape(config)
    goal = f"to meet {budget.describe()}"
    if total is not None and spec.num_experts is None:
        experts = _fewest_experts(budget, base, src_ex, experts)
        if budget.fits(base, experts):
            return base, experts, f"experts pruned first {goal} (width kept)"
    floor = f"experts first (floor {expert_floor(src_ex)}), then " if experts.num_experts < \
        src_ex.num_experts and spec.num_experts is None else ""
    rule = (f"{floor}the paper's rule on expert width (hidden at {HIDDEN_TO_MLP_RATE}x "
            "its rate)")
    per_group = base.num_heads // base.num_kv_heads
    keeps = [per_group] + ([k for k in range(per_group - 1, 0, -1)
                            if k * base.num_kv_heads % align.heads == 0]
                           if spec.num_heads is None else [])
    for keep in keeps:
        heads = dataclasses.replace(base, num_heads=keep * base.num_kv_heads)
        if budget.adapter.shape_error(config, heads):
            break
        found = _width(budget, src, heads, src_ex, experts, spec, align)
        if found is None:
            continue
        shape, ex = found
        # "MLP" names the experts' width (the dense MLP's too, pruned at its rate)
        axes = pruned_axes(dataclasses.replace(src, ffn_hidden_size=src_ex.ffn),
                           dataclasses.replace(shape, ffn_hidden_size=ex.ffn))
        if keep == per_group:
            return shape, ex, f"{axes} {goal} by {rule}"
        return shape, ex, (f"{axes} {goal}: heads pruned to {keep} per KV group (expert width "
                           f"-{MAX_MLP_PRUNE:.0%} was not enough), by {rule}")
    raise MinitronError(
        f"a budget of {budget.describe()} cannot be met by pruning experts to "
        f"{experts.num_experts} and width at sizes aligned to {align.as_dict()}; give "
        "num_experts, num_layers or drop_layers, or lower align")
