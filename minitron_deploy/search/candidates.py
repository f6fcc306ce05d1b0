"""Candidates: the pairs of a shape of the search space and a precision it is deployed in that
meet the goal, closest to it first."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.align import Alignment
from ..core.errors import MinitronError
from ..core.shape import ModelShape
from ..quantize.schemes import UNQUANTIZED
from .goal import Goal
from .predict import Prediction, Predictor
from .space import Bounds, enumerate_shapes, pruned_axes


@dataclass(frozen=True)
class Candidate:
    shape: ModelShape
    prediction: Prediction
    axes: str  # width, depth or mixed

    @property
    def scheme(self) -> str:
        return self.prediction.scheme

    @property
    def shape_key(self) -> str:
        """A file-name-safe identity of the shape (the key of its cached losses)."""
        s = self.shape
        return (f"h{s.hidden_size}-f{s.ffn_hidden_size}-a{s.num_heads}-kv{s.num_kv_heads}"
                f"-l{s.num_layers}")

    @property
    def key(self) -> str:
        """The shape's key, followed by the scheme when it is not the 16-bit checkpoint."""
        return self.shape_key if self.scheme == UNQUANTIZED else f"{self.shape_key}-{self.scheme}"


def find_candidates(config, goal: Goal, predictor: Predictor, bounds: Bounds = Bounds(),
                    align: Alignment = Alignment(), limit: int | None = None,
                    schemes: tuple[str, ...] = (UNQUANTIZED,)) -> list[Candidate]:
    """Every pair of a grid shape and one of ``schemes`` meeting ``goal`` (a resolved one),
    closest to the target first (ties: more parameters, then more weight bytes first), the
    pairs of at most ``limit`` shapes; refuses when none does."""
    src = ModelShape.from_config(config)
    found = []
    for shape in enumerate_shapes(config, bounds, align):
        for scheme in schemes:
            prediction = predictor.predict(shape, scheme)
            if goal.meets(prediction):
                found.append(Candidate(shape, prediction, pruned_axes(src, shape)))
    if not found:
        raise MinitronError(
            f"no shape within {bounds.max_width:.0%} width and {bounds.max_depth:.0%} depth "
            f"pruning meets {goal.describe()} in {', '.join(schemes)}; widen --tolerance, the "
            "pruning bounds (--max-width-prune, --max-depth-prune) or --schemes")
    found.sort(key=lambda c: (goal.distance(c.prediction), -c.prediction.params,
                              -c.prediction.weight_bytes, c.key))
    shapes: set[ModelShape] = set()
    kept = []
    for c in found:
        if c.shape in shapes or limit is None or len(shapes) < limit:
            shapes.add(c.shape)
            kept.append(c)
    return kept


def shape_representatives(candidates: list[Candidate]) -> list[Candidate]:
    """The first candidate of each shape, in order (each shape is pruned and ranked once)."""
    seen: dict[ModelShape, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.shape, c)
    return list(seen.values())
