"""The search space: every aligned student within the per-axis pruning bounds.

Like ModelOpt's Minitron search: at most 40% width (hidden, FFN, query heads per KV group) and
20% depth pruned by default, in steps of hidden 256, FFN 512 and 2 layers at Llama-3.1-8B scale.
Steps shrink with the model (a power-of-two divisor of at most 1/16 of the size, times the
alignment; one layer per 16), so small models get a useful grid too. KV heads are kept.

A mixture of experts adds two axes: the number of experts (at most half removed by default, in
steps of an eighth, never fewer than the experts per token, so top-k stays) and the experts'
width (within the width bound, in multiples of 8 for the grouped expert kernels, as hidden
is). A shared expert's width follows the experts' at the same rate; the dense MLP width is an
axis only where some layers are dense (Mixtral's and OLMoE's experts are their MLP width).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..arch import ExpertShape, MoEAdapter, get_adapter
from ..core.align import Alignment
from ..core.errors import MinitronError
from ..core.shape import ModelShape, loadability_error, reshaped_config
from ..pruning.moe_target import EXPERT_ALIGN, expert_width_step
from ..pruning.rule import round_to_step
from ..pruning.target import search_step

_HIDDEN_STEP_CAP, _FFN_STEP_CAP = 256, 512


@dataclass(frozen=True)
class Bounds:
    """Most pruning per axis (fractions) and the grid steps (None: from the model's size)."""

    max_width: float = 0.4
    max_depth: float = 0.2
    hidden_step: int | None = None
    ffn_step: int | None = None
    layer_step: int | None = None
    max_experts: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_width", "max_depth", "max_experts"):
            if not 0 <= getattr(self, name) < 1:
                raise MinitronError(f"{name.replace('_', '-')} pruning must be in [0, 1), "
                                    f"got {getattr(self, name)}")
        for name in ("hidden_step", "ffn_step", "layer_step"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MinitronError(f"{name.replace('_', '-')} must be positive, got {value}")

    def steps(self, src: ModelShape, align: Alignment) -> tuple[int, int, int]:
        """(hidden, FFN, layer) steps for ``src``; given steps are rounded up to the alignment."""
        hidden = math.lcm(self.hidden_step, align.hidden) if self.hidden_step \
            else search_step(src.hidden_size, _HIDDEN_STEP_CAP, align.hidden)
        ffn = math.lcm(self.ffn_step, align.ffn) if self.ffn_step \
            else search_step(src.ffn_hidden_size, _FFN_STEP_CAP, align.ffn)
        layers = self.layer_step or max(1, round(src.num_layers / 16))
        return hidden, ffn, layers


def _sizes(full: int, step: int, max_prune: float) -> list[int]:
    """``full`` and every multiple of ``step`` below it down to ``(1 - max_prune) * full``."""
    floor = (1 - max_prune) * full
    below = range((full - 1) // step * step, 0, -step)
    return [full] + [v for v in below if v >= floor]


def axis_values(src: ModelShape, bounds: Bounds, align: Alignment) -> dict[str, list[int]]:
    """The values each axis takes: hidden, FFN, query heads (whole per-group multiples of the
    KV heads, aligned) and layers."""
    hidden_step, ffn_step, layer_step = bounds.steps(src, align)
    group = src.num_heads // src.num_kv_heads
    heads = [k * src.num_kv_heads for k in range(group, 0, -1)
             if k >= (1 - bounds.max_width) * group
             and (k == group or k * src.num_kv_heads % align.heads == 0)]
    floor = (1 - bounds.max_depth) * src.num_layers
    layers = [n for n in range(src.num_layers, 0, -layer_step) if n >= floor]
    return {"hidden_size": _sizes(src.hidden_size, hidden_step, bounds.max_width),
            "ffn_hidden_size": _sizes(src.ffn_hidden_size, ffn_step, bounds.max_width),
            "num_heads": heads, "num_layers": layers}


@dataclass(frozen=True)
class Student:
    """A student's structure: its shape and, for a mixture of experts, its experts."""

    shape: ModelShape
    experts: ExpertShape | None = None

    @property
    def key(self) -> str:
        """A file-name-safe identity (the key of its cached losses)."""
        s, ex = self.shape, self.experts
        key = (f"h{s.hidden_size}-f{s.ffn_hidden_size}-a{s.num_heads}-kv{s.num_kv_heads}"
               f"-l{s.num_layers}")
        if ex is not None:
            key += f"-e{ex.num_experts}-m{ex.ffn}" + (
                f"-s{ex.shared_ffn}" if ex.shared_ffn is not None else "")
        return key

    def as_dict(self) -> dict[str, int]:
        return {**self.shape.as_dict(), **(self.experts.as_dict() if self.experts else {})}

    def config(self, config):
        """A copy of ``config`` describing this student."""
        if self.experts is not None:
            config = get_adapter(config).with_expert_shape(config, self.experts)
        return reshaped_config(config, self.shape)


def expert_values(src: ExpertShape, bounds: Bounds, align: Alignment
                  ) -> list[ExpertShape]:
    """The experts each sparse layer may keep: counts (steps of an eighth, at least top-k) by
    widths (multiples of 8; a shared expert at the same rate)."""
    step = max(1, src.num_experts // 8)
    floor = max(src.top_k, (1 - bounds.max_experts) * src.num_experts)
    counts = [n for n in range(src.num_experts, 0, -step) if n >= floor]
    widths = _sizes(src.ffn, expert_width_step(src.ffn, align.ffn), bounds.max_width)
    shared_step = src.shared_ffn and expert_width_step(src.shared_ffn, align.ffn)
    return [ExpertShape(num_experts=n, ffn=w, top_k=src.top_k, shared_ffn=src.shared_ffn and (
                src.shared_ffn if w == src.ffn
                else round_to_step(src.shared_ffn * w / src.ffn, shared_step)))
            for n in counts for w in widths if w % EXPERT_ALIGN == 0 or w == src.ffn]


def enumerate_students(config, bounds: Bounds, align: Alignment) -> list[Student]:
    """Every student of the grid that transformers loads, the source itself excluded."""
    src = ModelShape.from_config(config)
    align = align.for_source(src)
    values = axis_values(src, bounds, align)
    adapter = get_adapter(config)
    moe = isinstance(adapter, MoEAdapter)
    experts: list[ExpertShape | None] = [None]
    if moe:
        experts = expert_values(adapter.expert_shape(config), bounds, align)
        values["hidden_size"] = [h for h in values["hidden_size"]
                                 if h % EXPERT_ALIGN == 0 or h == src.hidden_size]
        if adapter.experts_are_ffn or len(adapter.sparse_layers(config)) == src.num_layers:
            values["ffn_hidden_size"] = [src.ffn_hidden_size]  # no dense MLP to prune
    students = []
    for hidden in values["hidden_size"]:
        for heads in values["num_heads"]:
            width = dataclasses.replace(src, hidden_size=hidden, num_heads=heads)
            if loadability_error(config, width) or adapter.shape_error(config, width):
                continue
            for ffn in values["ffn_hidden_size"]:
                for ex in experts:
                    if moe and adapter.experts_are_ffn:
                        ffn = ex.ffn
                    for layers in values["num_layers"]:
                        shape = dataclasses.replace(width, ffn_hidden_size=ffn,
                                                    num_layers=layers)
                        if shape != src or (ex is not None and ex != experts[0]):
                            students.append(Student(shape, ex))
    return students


def pruned_axes(src: Student, student: Student) -> str:
    """``width``, ``depth`` or ``mixed`` (both), ``+experts`` where experts are removed
    (``experts`` alone when nothing else is)."""
    shape, ex = student.shape, student.experts
    depth = shape.num_layers < src.shape.num_layers
    width = dataclasses.replace(shape, num_layers=src.shape.num_layers) != src.shape or (
        ex is not None and ex.ffn < src.experts.ffn)
    label = "mixed" if depth and width else "depth" if depth else "width" if width else ""
    if ex is not None and ex.num_experts < src.experts.num_experts:
        return f"{label}+experts" if label else "experts"
    return label
