"""Candidates: the shapes of the search space that meet the goal, closest to it first."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.align import Alignment
from ..core.errors import MinitronError
from ..core.shape import ModelShape
from .goal import Goal
from .predict import Prediction, Predictor
from .space import Bounds, enumerate_shapes, pruned_axes


@dataclass(frozen=True)
class Candidate:
    shape: ModelShape
    prediction: Prediction
    axes: str  # width, depth or mixed

    @property
    def key(self) -> str:
        """A file-name-safe identity of the shape (the cache key)."""
        s = self.shape
        return (f"h{s.hidden_size}-f{s.ffn_hidden_size}-a{s.num_heads}-kv{s.num_kv_heads}"
                f"-l{s.num_layers}")


def find_candidates(config, goal: Goal, predictor: Predictor, bounds: Bounds = Bounds(),
                    align: Alignment = Alignment(), limit: int | None = None) -> list[Candidate]:
    """Every grid shape meeting ``goal`` (a resolved one), closest to the target first (ties:
    more parameters first), at most ``limit``; refuses when none does."""
    src = ModelShape.from_config(config)
    found = []
    for shape in enumerate_shapes(config, bounds, align):
        prediction = predictor.predict(shape)
        if goal.meets(prediction):
            found.append(Candidate(shape, prediction, pruned_axes(src, shape)))
    if not found:
        raise MinitronError(
            f"no shape within {bounds.max_width:.0%} width and {bounds.max_depth:.0%} depth "
            f"pruning meets {goal.describe()}; widen --tolerance or the pruning bounds "
            "(--max-width-prune, --max-depth-prune)")
    found.sort(key=lambda c: (goal.distance(c.prediction), -c.prediction.params, c.key))
    return found[:limit]
