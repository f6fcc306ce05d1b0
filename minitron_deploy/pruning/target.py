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
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from ..arch import ExpertShape, MoEAdapter, get_adapter
from ..core.align import KERNEL_NOTE, Alignment
from ..core.errors import MinitronError
from ..core.schema import Schema, fields_of, positive, setting
from ..core.shape import ModelShape, count_params, loadability_error

HIDDEN_TO_MLP_RATE = 0.7
MAX_MLP_PRUNE = 0.6
_STEPS = 240
#: The rule's coarsest steps (ModelOpt's Minitron search steps hidden by 256, FFN by 512).
_HIDDEN_STEP_CAP, _FFN_STEP_CAP = 256, 512
_SHAPE_FIELDS = ("hidden_size", "ffn_hidden_size", "num_heads", "num_kv_heads", "num_layers",
                 "drop_layers", "target_params", "num_experts", "moe_ffn_hidden_size")
#: transformers' grouped expert kernels need 16-byte strides: sizes in multiples of 8 (bf16).
_EXPERT_ALIGN = 8


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
    target_params: float | None = setting(
        None, "parameter budget: absolute (4.5e9) or a fraction of the source (0.5)",
        unset="the explicit sizes only", check=positive, modelopt=_CONSTRAINT)
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
    params_after: int = 0
    align: Alignment = field(default_factory=Alignment)
    #: The experts of a mixture-of-experts model (None for dense models).
    experts: ExpertShape | None = None


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


def search_step(full: int, cap: int, align: int) -> int:
    """The rule's size step: a power-of-two divisor (<= full/16, <= cap) that is also a multiple
    of the alignment."""
    divisor = 1
    while divisor * 2 <= min(cap, full // 16):
        divisor *= 2
    return math.lcm(divisor, align)


def round_to_step(value: float, step: int) -> int:
    """Round down to a multiple of ``step``, at least one step."""
    return max(step, int(value // step) * step)


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


def _loadable_hidden(config, shape: ModelShape, align: int, source: int) -> int | None:
    """The largest loadable multiple of ``align`` up to ``shape.hidden_size``, else the smallest
    above it (up to ``source``); some configs constrain it (Llama: a multiple of the head count).
    None when no multiple up to ``source`` loads."""
    below = range(shape.hidden_size, 0, -align)
    above = range(shape.hidden_size + align, source + 1, align)
    for hidden in (*below, *above):
        if not loadability_error(config, dataclasses.replace(shape, hidden_size=hidden)):
            return hidden
    return None


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


#: Axes of a shape as a pruning summary names them; the first three are the width axes whose
#: keeping is stated too.
_AXES = (("ffn_hidden_size", "MLP"), ("hidden_size", "hidden"), ("num_heads", "heads"),
         ("num_kv_heads", "KV heads"), ("num_layers", "depth"))


def _join(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def pruned_axes(src: ModelShape, shape: ModelShape) -> str:
    """Which axes ``shape`` shrinks of ``src``, e.g. "MLP pruned (hidden and heads kept)"."""
    pruned = [label for key, label in _AXES if getattr(shape, key) < getattr(src, key)]
    kept = [label for _, label in _AXES[:3] if label not in pruned]
    text = f"{_join(pruned)} pruned" if pruned else "nothing pruned"
    return f"{text} ({_join(kept)} kept)" if kept and pruned else text


def _warn_unaligned(shape: ModelShape, align: Alignment) -> None:
    """One warning naming every size of ``shape`` off its alignment."""
    bad = align.unaligned(shape)
    if bad:
        sizes = ", ".join(f"{name}={value}" for name, value in bad.items())
        warnings.warn(f"target {sizes} not aligned to {align.as_dict()}: it works, but "
                      f"{KERNEL_NOTE}", stacklevel=3)


def _expert_target(config, spec: TargetSpec) -> tuple[ExpertShape | None, str]:
    """The experts to keep (None for dense models) and what the reason adds about them."""
    adapter = get_adapter(config)
    if not isinstance(adapter, MoEAdapter):
        if spec.num_experts is not None or spec.moe_ffn_hidden_size is not None:
            raise MinitronError(f"num_experts and moe_ffn_hidden_size apply to mixture-of-experts "
                                f"models; {config.model_type} has no experts")
        return None, ""
    if spec.target_params is not None:
        raise MinitronError("a parameter budget (target_params) is not supported for "
                            "mixture-of-experts models yet; give the sizes to keep")
    if adapter.experts_are_ffn and spec.ffn_hidden_size is not None:
        raise MinitronError(f"every MLP of {config.model_type} is a mixture of experts: give "
                            "moe_ffn_hidden_size, not ffn_hidden_size")
    src = adapter.expert_shape(config)
    for name, value, full in (("num_experts", spec.num_experts, src.num_experts),
                              ("moe_ffn_hidden_size", spec.moe_ffn_hidden_size, src.ffn)):
        if value is not None and value > full:
            raise MinitronError(f"target {name}={value} is larger than the source ({full}); "
                                "pruning only shrinks")
    num = spec.num_experts or src.num_experts
    target = dataclasses.replace(src, num_experts=num, ffn=spec.moe_ffn_hidden_size or src.ffn,
                                 top_k=min(src.top_k, num))
    notes = [f"{label} {before} -> {after}" for label, before, after in (
        ("experts", src.num_experts, target.num_experts),
        ("expert width", src.ffn, target.ffn),
        ("experts per token (fewer experts remain)", src.top_k, target.top_k)) if after < before]
    return target, "; " + ", ".join(notes) if notes else ""


def _check_expert_kernels(shape: ModelShape, experts: ExpertShape) -> None:
    bad = {name: value for name, value in (("hidden_size", shape.hidden_size),
                                           ("moe_ffn_hidden_size", experts.ffn))
           if value % _EXPERT_ALIGN}
    if bad:
        raise MinitronError(f"transformers' grouped expert kernels need hidden_size and "
                            f"moe_ffn_hidden_size in multiples of {_EXPERT_ALIGN}; got "
                            + ", ".join(f"{k}={v}" for k, v in bad.items()))


def resolve_target(config, spec: TargetSpec) -> ResolvedTarget:
    """Validate ``spec`` against ``config`` and return the uniform target shape."""
    if spec.is_empty():
        raise MinitronError("no target given: set a shape (hidden_size, ffn_hidden_size, "
                            "num_heads, num_kv_heads, num_layers, drop_layers, num_experts, "
                            "moe_ffn_hidden_size) or target_params")
    src = ModelShape.from_config(config)
    _check_explicit(src, spec)
    experts, expert_note = _expert_target(config, spec)
    align = spec.align.for_source(src)
    params_before = count_params(config)
    base = _explicit_shape(src, spec)
    if experts is not None:
        adapter = get_adapter(config)
        if adapter.experts_are_ffn:
            base = dataclasses.replace(base, ffn_hidden_size=experts.ffn)
        _check_expert_kernels(base, experts)
        config = adapter.with_expert_shape(config, experts)  # params_before is the source's
    if spec.target_params is None:
        shape, reason = base, f"explicit target shape: {pruned_axes(src, base)}"
    else:
        budget = int(spec.target_params * params_before if spec.target_params <= 1
                     else spec.target_params)
        if budget >= params_before:
            raise MinitronError(f"target of {budget:,} parameters is not smaller than the source "
                                f"({params_before:,})")
        shape, reason = _budget_shape(config, base, spec, align, budget)
    problem = loadability_error(config, shape) or get_adapter(config).shape_error(config, shape)
    if problem:
        raise MinitronError(f"transformers would refuse the target shape {shape.as_dict()}: "
                            f"{problem}")
    if shape == src and spec.drop_layers is None and not expert_note:
        raise MinitronError("the target equals the source shape: nothing to prune")
    if experts is not None:
        reason = (reason if shape != src else "explicit target shape") + expert_note
    _warn_unaligned(shape, align)
    return ResolvedTarget(shape=shape, drop_layers=spec.drop_layers, reason=reason,
                          params_before=params_before, params_after=count_params(config, shape),
                          align=align, experts=experts)
