"""``TrainConfig``, the optimisation settings of one training run, and its learning-rate
schedule (linear warmup, cosine decay)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.errors import MinitronError
from .objectives import PRECISIONS


@dataclass
class TrainConfig:
    """Optimisation settings; ``steps`` counts optimizer steps."""

    steps: int
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # default: 5% of the steps, at least 1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    precision: str = "auto"  # auto: bf16 where faster (precision.py); or "bf16" / "fp32"
    strategy: str = "single"  # single, ddp or fsdp (resolved; see parallel.py)
    activation_checkpointing: bool = False
    quantize: str | None = None  # the scheme the student trains through (QAD), or None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise MinitronError(f"precision must be one of {', '.join(PRECISIONS)}, "
                                f"got {self.precision!r}")

    @property
    def resolved_warmup_steps(self) -> int:
        """Warmup steps: as given, else 5% of the steps (at least 1)."""
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 20)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise MinitronError(f"{name.replace('_', '-')} must be at least 1, "
                                    f"got {getattr(self, name)}")
        if self.lr <= 0:
            raise MinitronError(f"learning rate must be positive, got {self.lr}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    warmup = cfg.resolved_warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
