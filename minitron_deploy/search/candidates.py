"""Candidates: the pairs of a student of the search space (a shape, and experts for a mixture
of experts) and a precision it is deployed in that meet the goal, closest to it first."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from ..arch import ExpertShape
from ..core.align import Alignment
from ..core.errors import MinitronError
from ..core.shape import ModelShape
from ..quantize.schemes import UNQUANTIZED
from .goal import Goal
from .predict import Prediction, Predictor
from .space import Bounds, Student, enumerate_students, pruned_axes


@dataclass(frozen=True)
class Candidate:
    student: Student
    prediction: Prediction
    axes: str  # width, depth or mixed; +experts where experts are removed

    @property
    def shape(self) -> ModelShape:
        return self.student.shape

    @property
    def experts(self) -> ExpertShape | None:
        return self.student.experts

    @property
    def scheme(self) -> str:
        return self.prediction.scheme

    @property
    def shape_key(self) -> str:
        """A file-name-safe identity of the student (the key of its cached losses)."""
        return self.student.key

    @property
    def key(self) -> str:
        """The shape's key, followed by the scheme when it is not the 16-bit checkpoint."""
        return self.shape_key if self.scheme == UNQUANTIZED else f"{self.shape_key}-{self.scheme}"


def find_candidates(config, goal: Goal, predictor: Predictor, bounds: Bounds = Bounds(),
                    align: Alignment = Alignment(), limit: int | None = None,
                    schemes: tuple[str, ...] = (UNQUANTIZED,)) -> list[Candidate]:
    """Every pair of a grid student and one of ``schemes`` that can quantize it meeting
    ``goal`` (a resolved one),
    closest to the target first (ties: more parameters, then more weight bytes first), the
    pairs of at most ``limit`` students; refuses when none does."""
    src = predictor.source
    found = []
    students = enumerate_students(config, bounds, align)
    for student in tqdm(students, desc="predicting candidates", unit="student", leave=False,
                        disable=len(students) < 500):
        for scheme in filter(lambda name: predictor.writable(student, name), schemes):
            prediction = predictor.predict(student, scheme)
            if goal.meets(prediction):
                found.append(Candidate(student, prediction, pruned_axes(src, student)))
    if not found:
        raise MinitronError(
            f"no shape within {bounds.max_width:.0%} width and {bounds.max_depth:.0%} depth "
            f"pruning meets {goal.describe()} in {', '.join(schemes)}; widen --tolerance, the "
            "pruning bounds (--max-width-prune, --max-depth-prune) or --schemes")
    found.sort(key=lambda c: (goal.distance(c.prediction), -c.prediction.params,
                              -c.prediction.weight_bytes, c.key))
    kept_students: set[Student] = set()
    kept = []
    for c in found:
        if c.student in kept_students or limit is None or len(kept_students) < limit:
            kept_students.add(c.student)
            kept.append(c)
    return kept


def shape_representatives(candidates: list[Candidate]) -> list[Candidate]:
    """The first candidate of each student, in order (each is pruned and ranked once)."""
    seen: dict[Student, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.student, c)
    return list(seen.values())
