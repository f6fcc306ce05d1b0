"""Turn what the user asked for (explicit shape or a parameter budget) into one uniform shape.

No NAS: a budget is met with a fixed rule taken from the paper, MLP first and most, then the
hidden size, attention heads last. The MLP/hidden ratio is the one of Llama-3.1-Minitron-4B-Width
(MLP 14336 -> 9216 is -35.7%, hidden 4096 -> 3072 is -25%, so hidden shrinks at 0.7x the MLP rate).
Sizes the rule picks are kernel-aligned (``align.py``); an explicit unaligned size warns.
Every refusal happens here, before any weights are loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from ..arch import ExpertShape, get_adapter
from ..core.align import KERNEL_NOTE, Alignment
from ..core.errors import MinitronError
from ..core.schema import Schema, fields_of, positive, setting
from ..core.shape import (
    ModelShape,
    ParamCounts,
    count_params,
    loadability_error,
    param_counts,
)
from .moe_target import (
    check_expert_kernels,
    expert_note,
    expert_target,
    moe_budget_shape,
)
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

_SHAPE_FIELDS = ("hidden_size", "ffn_hidden_size", "num_heads", "num_kv_heads", "num_layers",
                 "drop_layers", "target_params", "target_active_params", "num_experts",
                 "moe_ffn_hidden_size", "shared_expert_ffn_hidden_size")


_KEEP = "the source's, or what target_params picks"
_CONSTRAINT = "the ModelOpt mode takes the target as its constraints (export_config or params)"


def parse_alignment(value: object) -> Alignment:
    """An :class:`Alignment` from ``"HIDDEN,FFN[,HEADS]"`` text or a mapping of its fields."""
    if isinstance(value, Alignment):
        return value
    if isinstance(value, str):
        return Alignment.parse(value)
    if not isinstance(value, dict):
        raise MinitronError(f"{value!r} is neither HIDDEN,FFN[,HEADS] nor a mapping")
    known = list(Alignment().as_dict())
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise MinitronError(f"unknown key(s) {', '.join(map(str, unknown))} "
                            f"(known: {', '.join(known)})")
    return Alignment(**value)


def parse_layers(value: object) -> list[int]:
    """Layer indices from ``"16-31"`` / ``"3,5,10-12"`` text or a list of integers."""
    if isinstance(value, str):
        return parse_layer_ranges(value)
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise MinitronError(f"{value!r} is not a list of layer indices")
    return sorted(set(value))


def _show_alignment(align: Alignment) -> str:
    return f"{align.hidden},{align.ffn},{align.heads}"


@dataclass
class TargetSpec(Schema):
    """A pruning request. Unset fields keep the source value (or are solved for by the budget);
    ``align`` holds the multiples the chosen sizes keep (see :class:`Alignment`)."""

    hidden_size: int | None = setting(None, "target hidden size", unset=_KEEP,
                                      check=positive, modelopt=_CONSTRAINT)
    ffn_hidden_size: int | None = setting(None, "target MLP intermediate size", unset=_KEEP,
                                          check=positive, modelopt=_CONSTRAINT)
    num_heads: int | None = setting(None, "target query heads", unset=_KEEP, check=positive,
                                    modelopt=_CONSTRAINT)
    num_kv_heads: int | None = setting(None, "target KV heads", unset=_KEEP, check=positive,
                                       modelopt=_CONSTRAINT)
    num_layers: int | None = setting(None, "target layer count, layers chosen by depth_metric",
                                     unset="all kept", check=positive, modelopt=_CONSTRAINT)
    drop_layers: list[int] | None = setting(
        None, "layers to remove, e.g. 16-31 or 3,5,10-12", unset="none", convert=parse_layers,
        show=lambda layers: ",".join(map(str, layers)),
        modelopt="explicit layers are not a ModelOpt constraint; give num_layers")
    num_experts: int | None = setting(
        None, "mixture-of-experts models: experts kept in every sparse layer, ranked by "
        "expert_criterion (experts per token are lowered to it if fewer remain)",
        unset="all kept", check=positive, modelopt=_CONSTRAINT)
    moe_ffn_hidden_size: int | None = setting(
        None, "mixture-of-experts models: width of every expert's MLP", unset="the source's",
        check=positive, modelopt=_CONSTRAINT)
    shared_expert_ffn_hidden_size: int | None = setting(
        None, "mixture-of-experts models with a shared expert (Qwen2-MoE): its MLP width",
        unset=_KEEP, check=positive, modelopt=_CONSTRAINT)
    target_params: float | None = setting(
        None, "parameter budget: absolute (4.5e9) or a fraction of the source (0.5); "
        "mixture-of-experts models: of the total (see docs/moe.md for the rule)",
        unset="the explicit sizes only", check=positive, modelopt=_CONSTRAINT)
    target_active_params: float | None = setting(
        None, "budget of the parameters one token uses (mixture-of-experts models: top-k of "
        "the routed experts; dense: all), absolute or a fraction of the source's; may go with "
        "target_params", unset="no active budget", check=positive,
        modelopt="the ModelOpt mode takes it as its active_params constraint")
    align: Alignment = setting(
        Alignment(), "multiples HIDDEN,FFN[,HEADS] the budget rule keeps the hidden size, FFN "
        "size and head counts at (FP8 and Marlin kernels stay usable; a source that is not a "
        "multiple gets the largest power of two dividing it; 1,1 turns it off); explicit sizes "
        "off it warn", convert=parse_alignment, show=_show_alignment)

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in _SHAPE_FIELDS)

    def request(self) -> dict:
        """The target as asked: the shape fields given, and the alignment."""
        values = self.record()
        return {f.name: values[f.name] for f in fields_of(TargetSpec)
                if values[f.name] is not None}


@dataclass
class ResolvedTarget:
    """The shape to trim to, which layers go (None: chosen by depth importance), why, and the
    alignment applied (the request's, fitted to the source)."""

    shape: ModelShape
    drop_layers: list[int] | None
    reason: str
    params_before: int = 0
    align: Alignment = field(default_factory=Alignment)
    #: The experts of a mixture-of-experts model, source and target (None for dense models).
    experts: ExpertShape | None = None
    experts_before: ExpertShape | None = None
    #: Total, active and routed-expert parameters of the source and of the target.
    counts_before: ParamCounts | None = None
    counts_after: ParamCounts | None = None

    @property
    def params_after(self) -> int:
        return self.counts_after.total if self.counts_after else 0


def parse_layer_ranges(text: str) -> list[int]:
    """``"16-31"`` or ``"3,5,10-12"`` -> sorted unique layer indices (inclusive ranges)."""
    layers: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                start, end = (int(x) for x in part.split("-", 1))
                if end < start:
                    raise ValueError
                layers.update(range(start, end + 1))
            elif part:
                layers.add(int(part))
    except ValueError:
        raise MinitronError(f"cannot parse layer list {text!r}; use e.g. '16-31' or '3,5,10-12'")
    return sorted(layers)


def _check_explicit(src: ModelShape, spec: TargetSpec) -> None:
    for name in ("hidden_size", "ffn_hidden_size", "num_heads", "num_kv_heads", "num_layers"):
        value, full = getattr(spec, name), getattr(src, name)
        if value is None:
            continue
        if value > full:
            raise MinitronError(f"target {name}={value} is larger than the source ({full}); "
                                "pruning only shrinks")
    kv = spec.num_kv_heads or src.num_kv_heads
    heads = spec.num_heads or (src.num_heads // src.num_kv_heads) * kv
    if heads % kv:
        raise MinitronError(f"{heads} attention heads cannot be split evenly into {kv} KV groups")
    if heads // kv > src.num_heads // src.num_kv_heads:
        raise MinitronError(
            f"{heads} heads over {kv} KV groups needs {heads // kv} heads per group, but the "
            f"source has only {src.num_heads // src.num_kv_heads}")
    if spec.drop_layers is not None:
        if spec.num_layers is not None:
            raise MinitronError("give either num_layers or drop_layers, not both")
        bad = [i for i in spec.drop_layers if not 0 <= i < src.num_layers]
        if bad:
            raise MinitronError(f"layers {bad} are out of range: the model has layers "
                                f"0-{src.num_layers - 1}")
        if len(spec.drop_layers) >= src.num_layers:
            raise MinitronError("cannot drop every layer")


def _explicit_shape(src: ModelShape, spec: TargetSpec) -> ModelShape:
    kv = spec.num_kv_heads or src.num_kv_heads
    layers = spec.num_layers or src.num_layers - len(spec.drop_layers or [])
    return dataclasses.replace(
        src,
        hidden_size=spec.hidden_size or src.hidden_size,
        ffn_hidden_size=spec.ffn_hidden_size or src.ffn_hidden_size,
        num_kv_heads=kv,
        num_heads=spec.num_heads or (src.num_heads // src.num_kv_heads) * kv,
        num_layers=layers,
    )


def _width_for_budget(config, src: ModelShape, base: ModelShape, spec: TargetSpec,
                      align: Alignment, fits_budget: Callable[[ModelShape], bool]
                      ) -> ModelShape | None:
    """Least MLP and hidden pruning along the paper's rule (aligned sizes) that fits the budget,
    for the heads of ``base``; None when even the widest pruning does not."""
    hidden_step = search_step(src.hidden_size, _HIDDEN_STEP_CAP, align.hidden)
    ffn_step = search_step(src.ffn_hidden_size, _FFN_STEP_CAP, align.ffn)

    def width_at(s: float) -> ModelShape | None:
        ffn = spec.ffn_hidden_size or round_to_step(src.ffn_hidden_size * (1 - s), ffn_step)
        hidden = spec.hidden_size or round_to_step(
            src.hidden_size * (1 - HIDDEN_TO_MLP_RATE * s), hidden_step)
        shape = dataclasses.replace(base, ffn_hidden_size=ffn, hidden_size=hidden)
        if spec.hidden_size is None:
            hidden = _loadable_hidden(config, shape, align.hidden, src.hidden_size)
            shape = None if hidden is None else dataclasses.replace(shape, hidden_size=hidden)
        return shape

    def fits(step: int) -> bool:
        shape = width_at(MAX_MLP_PRUNE * step / _STEPS)
        return shape is not None and fits_budget(shape)

    if not fits(_STEPS):
        return None
    low, high = 0, _STEPS  # parameter count falls monotonically with the step: bisect
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    return width_at(MAX_MLP_PRUNE * low / _STEPS)


def _budget_shape(config, base: ModelShape, spec: TargetSpec, align: Alignment,
                  budget: int) -> tuple[ModelShape, str]:
    """The paper's rule: MLP and hidden first; heads (per KV group, kept aligned) only when
    those alone cannot meet ``budget``, and then as few as possible."""
    src = ModelShape.from_config(config)
    fits_budget = functools.cache(lambda shape: count_params(config, shape) <= budget)
    per_group = base.num_heads // base.num_kv_heads
    keeps = [per_group] + ([k for k in range(per_group - 1, 0, -1)
                            if k * base.num_kv_heads % align.heads == 0]
                           if spec.num_heads is None else [])
    for keep in keeps:
        heads = dataclasses.replace(base, num_heads=keep * base.num_kv_heads)
        shape = _width_for_budget(config, src, heads, spec, align, fits_budget)
        if shape is None:
            continue
        axes = f"{pruned_axes(src, shape)} to meet the budget"
        rule = f"the paper's rule (hidden at {HIDDEN_TO_MLP_RATE}x the MLP rate)"
        if keep == per_group:
            return shape, f"{axes} by {rule}"
        return shape, (f"{axes}: heads pruned to {keep} per KV group (MLP -{MAX_MLP_PRUNE:.0%} "
                       f"and hidden -{HIDDEN_TO_MLP_RATE * MAX_MLP_PRUNE:.0%} at aligned sizes "
                       f"were not enough), the rest by {rule}")
    raise MinitronError(
        f"a budget of {budget:,} parameters cannot be met by width pruning alone at sizes "
        f"aligned to {align.as_dict()}; add num_layers or drop_layers for depth pruning, "
        "or lower align")


def _warn_unaligned(shape: ModelShape, align: Alignment) -> None:
    """One warning naming every size of ``shape`` off its alignment."""
    bad = align.unaligned(shape)
    if bad:
        sizes = ", ".join(f"{name}={value}" for name, value in bad.items())
        warnings.warn(f"target {sizes} not aligned to {align.as_dict()}: it works, but "
                      f"{KERNEL_NOTE}", stacklevel=3)


def _budget(name: str, value: float | None, before: int, what: str) -> int | None:
    """A budget in parameters from a fraction of ``before`` or an absolute count."""
    if value is None:
        return None
    budget = int(value * before if value <= 1 else value)
    if budget >= before:
        raise MinitronError(f"{name}: a target of {budget:,} {what}parameters is not smaller "
                            f"than the source ({before:,})")
    return budget


def resolve_target(config, spec: TargetSpec) -> ResolvedTarget:
    """Validate ``spec`` against ``config`` and return the uniform target shape."""
    if spec.is_empty():
        raise MinitronError("no target given: set a shape (hidden_size, ffn_hidden_size, "
                            "num_heads, num_kv_heads, num_layers, drop_layers, num_experts, "
                            "moe_ffn_hidden_size, shared_expert_ffn_hidden_size), target_params "
                            "or target_active_params")
    src = ModelShape.from_config(config)
    _check_explicit(src, spec)
    experts = expert_target(config, spec)
    align = spec.align.for_source(src)
    before = param_counts(config)
    total = _budget("target_params", spec.target_params, before.total, "")
    active = _budget("target_active_params", spec.target_active_params, before.active, "active ")
    base = _explicit_shape(src, spec)
    adapter = get_adapter(config)
    if experts is None:
        shape, reason = base, f"explicit target shape: {pruned_axes(src, base)}"
        if total is not None or active is not None:  # a dense model's active are all
            shape, reason = _budget_shape(config, base, spec, align,
                                          min(b for b in (total, active) if b is not None))
        source_config = config
    else:
        if adapter.experts_are_ffn:
            base = dataclasses.replace(base, ffn_hidden_size=experts.ffn)
        check_expert_kernels(base, experts)
        shape, reason = base, f"explicit target shape: {pruned_axes(src, base)}"
        if total is not None or active is not None:
            shape, experts, reason = moe_budget_shape(config, base, experts, spec, align,
                                                      total, active)
        source_config, config = config, adapter.with_expert_shape(config, experts)
    problem = loadability_error(config, shape) or adapter.shape_error(config, shape)
    if problem:
        raise MinitronError(f"transformers would refuse the target shape {shape.as_dict()}: "
                            f"{problem}")
    experts_before = None if experts is None else adapter.expert_shape(source_config)
    note = "" if experts is None else expert_note(experts_before, experts)
    if shape == src and spec.drop_layers is None and not note:
        raise MinitronError("the target equals the source shape: nothing to prune")
    if experts is not None and shape == src and reason.startswith("explicit"):
        reason = "explicit target shape"
    _warn_unaligned(shape, align)
    return ResolvedTarget(shape=shape, drop_layers=spec.drop_layers, reason=reason + note,
                          params_before=before.total, align=align, experts=experts,
                          experts_before=experts_before,
                          counts_before=before, counts_after=param_counts(config, shape))
