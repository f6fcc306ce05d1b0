"""The budget rule's shared pieces: its rates and steps, the loadable hidden size, and how a
summary names the pruned axes (used by the dense rule in ``target.py`` and the
mixture-of-experts rule in ``moe_target.py``)."""

from __future__ import annotations

import dataclasses
import math

from ..core.shape import ModelShape, loadability_error

HIDDEN_TO_MLP_RATE = 0.7
MAX_MLP_PRUNE = 0.6
_STEPS = 240
#: The rule's coarsest steps (ModelOpt's Minitron search steps hidden by 256, FFN by 512).
_HIDDEN_STEP_CAP, _FFN_STEP_CAP = 256, 512


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
