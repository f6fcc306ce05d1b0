"""Turn what the user asked for (explicit shape or a parameter budget) into one uniform shape.

No NAS: a budget is met with a fixed rule taken from the paper, MLP first and most, then the
hidden size, attention heads last. The MLP/hidden ratio is the one of Llama-3.1-Minitron-4B-Width
(MLP 14336 -> 9216 is -35.7%, hidden 4096 -> 3072 is -25%, so hidden shrinks at 0.7x the MLP rate).
Every refusal happens here, before any weights are loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import MinitronError
from .shape import ModelShape, count_params, loadability_error

HIDDEN_TO_MLP_RATE = 0.7
MAX_MLP_PRUNE = 0.6
_STEPS = 240


@dataclass
class TargetSpec:
    """A pruning request. Unset fields keep the source value (or are solved for by the budget)."""

    hidden_size: int | None = None
    ffn_hidden_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    num_layers: int | None = None
    drop_layers: list[int] | None = None
    target_params: float | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in dataclasses.asdict(self).values())


@dataclass
class ResolvedTarget:
    """The shape to trim to, which layers go (None: chosen by depth importance), and why."""

    shape: ModelShape
    drop_layers: list[int] | None
    reason: str
    params_before: int = 0
    params_after: int = 0


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


def round_to_divisor(value: float, full: int, cap: int) -> int:
    """Round down to a multiple of a power-of-two divisor (<= full/16, <= cap), at least one step."""
    divisor = 1
    while divisor * 2 <= min(cap, full // 16):
        divisor *= 2
    return max(divisor, int(value // divisor) * divisor)


def _check_explicit(src: ModelShape, spec: TargetSpec) -> None:
    for name in ("hidden_size", "ffn_hidden_size", "num_heads", "num_kv_heads", "num_layers"):
        value, full = getattr(spec, name), getattr(src, name)
        if value is None:
            continue
        if value <= 0:
            raise MinitronError(f"target {name}={value} must be positive")
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
            raise MinitronError("give either --num-layers or --drop-layers, not both")
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


def _budget_shape(config, base: ModelShape, spec: TargetSpec, budget: int) -> tuple[ModelShape, str]:
    """Smallest pruning along the paper's rule whose parameter count fits ``budget``."""
    src = ModelShape.from_config(config)

    def width_at(s: float) -> ModelShape:
        ffn = spec.ffn_hidden_size or round_to_divisor(
            src.ffn_hidden_size * (1 - s), src.ffn_hidden_size, 512)
        shape = dataclasses.replace(base, ffn_hidden_size=ffn, hidden_size=spec.hidden_size or
                                    round_to_divisor(src.hidden_size * (1 - HIDDEN_TO_MLP_RATE * s),
                                                     src.hidden_size, 256))
        # Some configs constrain the hidden size (Llama: a multiple of the head count): prefer a
        # loadable shape over the power-of-two multiple, stepping down one channel at a time.
        while spec.hidden_size is None and shape.hidden_size > 1 and loadability_error(config, shape):
            shape = dataclasses.replace(shape, hidden_size=shape.hidden_size - 1)
        return shape

    widest = width_at(MAX_MLP_PRUNE)
    if count_params(config, widest) <= budget:
        low, high = 0, _STEPS  # parameter count falls monotonically with the step: bisect
        while low < high:
            mid = (low + high) // 2
            if count_params(config, width_at(MAX_MLP_PRUNE * mid / _STEPS)) <= budget:
                high = mid
            else:
                low = mid + 1
        return width_at(MAX_MLP_PRUNE * low / _STEPS), (
            f"MLP and hidden pruned at the paper's {HIDDEN_TO_MLP_RATE}:1 hidden:MLP rate until "
            "the budget was met; heads kept")
    if spec.num_heads is None:
        per_group = base.num_heads // base.num_kv_heads
        for keep in range(per_group - 1, 0, -1):
            shape = dataclasses.replace(widest, num_heads=keep * base.num_kv_heads)
            if count_params(config, shape) <= budget:
                return shape, (f"MLP -{MAX_MLP_PRUNE:.0%} and hidden "
                               f"-{HIDDEN_TO_MLP_RATE * MAX_MLP_PRUNE:.0%} were not enough; "
                               f"heads pruned to {keep} per KV group")
    raise MinitronError(
        f"a budget of {budget:,} parameters cannot be met by width pruning alone (the "
        f"narrowest allowed shape has {count_params(config, widest):,}); add --num-layers or "
        "--drop-layers for depth pruning")


def resolve_target(config, spec: TargetSpec) -> ResolvedTarget:
    """Validate ``spec`` against ``config`` and return the uniform target shape."""
    if spec.is_empty():
        raise MinitronError("no target given: pass a shape (--hidden-size, --ffn-hidden-size, "
                            "--num-heads, --num-kv-heads, --num-layers, --drop-layers) or "
                            "--target-params")
    src = ModelShape.from_config(config)
    _check_explicit(src, spec)
    params_before = count_params(config)
    base = _explicit_shape(src, spec)
    if spec.target_params is None:
        shape, reason = base, "explicit target shape"
    else:
        if spec.target_params <= 0:
            raise MinitronError(f"--target-params must be positive, got {spec.target_params}")
        budget = int(spec.target_params * params_before if spec.target_params <= 1
                     else spec.target_params)
        if budget >= params_before:
            raise MinitronError(f"target of {budget:,} parameters is not smaller than the source "
                                f"({params_before:,})")
        shape, reason = _budget_shape(config, base, spec, budget)
    problem = loadability_error(config, shape)
    if problem:
        raise MinitronError(f"transformers would refuse the target shape {shape.as_dict()}: "
                            f"{problem}")
    if shape == src and spec.drop_layers is None:
        raise MinitronError("the target equals the source shape: nothing to prune")
    return ResolvedTarget(shape=shape, drop_layers=spec.drop_layers, reason=reason,
                          params_before=params_before, params_after=count_params(config, shape))
