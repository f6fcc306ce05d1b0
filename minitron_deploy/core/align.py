"""Kernel-friendly sizes for pruned shapes.

FP8 GEMMs need every GEMM dimension divisible by 16, block-scaled FP8 by 128 and Marlin
(GPTQ/AWQ) kernels by 64; tensor parallelism needs head counts divisible by its degree. The
default keeps hidden and FFN sizes multiples of 64 and head counts unconstrained. A source that
is itself not a multiple of a requested size gets the largest power of two dividing both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import MinitronError
from .shape import ModelShape

KERNEL_NOTE = "FP8 GEMMs need multiples of 16, block FP8 128, Marlin kernels 64"


@dataclass(frozen=True)
class Alignment:
    """Multiples the hidden size, the FFN size and the (query and KV) head counts are kept at."""

    hidden: int = 64
    ffn: int = 64
    heads: int = 1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MinitronError(f"alignment {name}={value!r} must be a positive integer")

    @classmethod
    def parse(cls, text: str) -> "Alignment":
        """``"HIDDEN,FFN"`` or ``"HIDDEN,FFN,HEADS"``, e.g. ``"128,128"``."""
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) not in (2, 3):
            raise MinitronError(f"cannot parse alignment {text!r}; use HIDDEN,FFN[,HEADS], "
                                "e.g. 64,64 or 128,128,2")
        return cls(*values)

    def for_source(self, src: ModelShape) -> "Alignment":
        """The alignment ``src`` allows: each multiple as asked where the source size is one,
        else the largest power of two dividing both."""
        return Alignment(hidden=_fit(self.hidden, src.hidden_size),
                         ffn=_fit(self.ffn, src.ffn_hidden_size),
                         heads=_fit(self.heads, math.gcd(src.num_heads, src.num_kv_heads)))

    def unaligned(self, shape: ModelShape) -> dict[str, int]:
        """The sizes of ``shape`` that are not multiples of this alignment."""
        sizes = {"hidden_size": (shape.hidden_size, self.hidden),
                 "ffn_hidden_size": (shape.ffn_hidden_size, self.ffn),
                 "num_heads": (shape.num_heads, self.heads),
                 "num_kv_heads": (shape.num_kv_heads, self.heads)}
        return {name: value for name, (value, step) in sizes.items() if value % step}

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _fit(requested: int, size: int) -> int:
    if size % requested == 0:
        return requested
    common = math.gcd(size, requested)
    return common & -common
