"""What the student must meet: a parameter (total or active), memory or speedup target, within
a tolerance."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import MinitronError
from .predict import Prediction

KINDS = ("params", "active_params", "memory", "speedup")
_COUNTS = ("params", "active_params")


@dataclass(frozen=True)
class Goal:
    """``params`` or ``active_params`` (a count, or a fraction of the source's when <= 1; a
    mixture of experts' active parameters are those one token uses), ``memory`` (GiB of weights
    plus KV cache) or ``speedup`` (predicted, over the source at the same batch).

    A shape meets it when its value lies in ``[value * (1 - tolerance), value]`` (counts,
    memory: as large as allowed) or ``[value, value * (1 + tolerance)]`` (speedup)."""

    kind: str
    value: float
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MinitronError(f"unknown target {self.kind!r}; choose from {', '.join(KINDS)}")
        if not self.value > 0:
            raise MinitronError(f"the {self.kind} target must be positive, got {self.value}")
        if self.kind == "speedup" and self.value <= 1:
            raise MinitronError(f"a speedup target must exceed 1, got {self.value}")
        if not 0 < self.tolerance < 1:
            raise MinitronError(f"--tolerance must be in (0, 1), got {self.tolerance}")

    def resolved(self, source: Prediction) -> "Goal":
        """A parameter fraction turned into a count of the ``source``'s."""
        if self.kind in _COUNTS and self.value <= 1:
            return Goal(self.kind, self.value * self.measure(source), self.tolerance)
        return self

    def measure(self, prediction: Prediction) -> float:
        return {"params": prediction.params, "active_params": prediction.active_params,
                "memory": prediction.memory_gib, "speedup": prediction.speedup}[self.kind]

    def window(self) -> tuple[float, float]:
        if self.kind == "speedup":
            return self.value, self.value * (1 + self.tolerance)
        return self.value * (1 - self.tolerance), self.value

    def meets(self, prediction: Prediction) -> bool:
        low, high = self.window()
        return low <= self.measure(prediction) <= high

    def distance(self, prediction: Prediction) -> float:
        """How far from the target, relative (0: exactly on it)."""
        return abs(self.measure(prediction) / self.value - 1)

    def describe(self) -> str:
        low, high = self.window()
        if self.kind in _COUNTS:
            what = "parameters" if self.kind == "params" else "active parameters"
            return f"{low:,.0f} to {high:,.0f} {what}"
        if self.kind == "memory":
            return f"{low:.4g} to {high:.4g} GiB of weights and KV cache"
        return f"predicted speedup {low:.2f}x to {high:.2f}x"
