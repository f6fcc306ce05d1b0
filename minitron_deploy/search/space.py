"""The search space: every aligned shape within the per-axis pruning bounds.

Like ModelOpt's Minitron search: at most 40% width (hidden, FFN, query heads per KV group) and
20% depth pruned by default, in steps of hidden 256, FFN 512 and 2 layers at Llama-3.1-8B scale.
Steps shrink with the model (a power-of-two divisor of at most 1/16 of the size, times the
alignment; one layer per 16), so small models get a useful grid too. KV heads are kept.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..core.align import Alignment
from ..core.errors import MinitronError
from ..core.shape import ModelShape, loadability_error
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

    def __post_init__(self) -> None:
        for name in ("max_width", "max_depth"):
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


def enumerate_shapes(config, bounds: Bounds, align: Alignment) -> list[ModelShape]:
    """Every shape of the grid that transformers loads, the source itself excluded."""
    src = ModelShape.from_config(config)
    align = align.for_source(src)
    values = axis_values(src, bounds, align)
    shapes = []
    for hidden in values["hidden_size"]:
        for heads in values["num_heads"]:
            width = dataclasses.replace(src, hidden_size=hidden, num_heads=heads)
            if loadability_error(config, width):
                continue
            for ffn in values["ffn_hidden_size"]:
                for layers in values["num_layers"]:
                    shape = dataclasses.replace(width, ffn_hidden_size=ffn, num_layers=layers)
                    if shape != src:
                        shapes.append(shape)
    return shapes


def pruned_axes(src: ModelShape, shape: ModelShape) -> str:
    """``width``, ``depth`` or ``mixed``."""
    depth = shape.num_layers < src.num_layers
    width = dataclasses.replace(shape, num_layers=src.num_layers) != src
    return "mixed" if depth and width else "depth" if depth else "width"
