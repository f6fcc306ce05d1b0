"""How much of its teacher a student keeps: the held-out perplexity ratio, and the share of the
teacher's above-chance accuracy that the student still has, each with a standard error.

Standard errors use the delta method and treat the two models' estimates as independent. They
are scored on the same items, so the errors are positively correlated and the true standard
errors are smaller: the figures here are conservative."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .api import NORMED, PPL, PPL_STDERR, headline, metric_names
from .tasks import load_named_task


@dataclass(frozen=True)
class Retention:
    """Student against teacher. ``None`` where a figure cannot be formed (no perplexity, no
    task, or a teacher that is not above chance)."""

    ppl_ratio: float | None
    ppl_ratio_stderr: float | None
    accuracy_kept: float | None  # sum over tasks of (student - chance) / (teacher - chance)
    accuracy_kept_stderr: float | None
    tasks: tuple[str, ...]


def chance_accuracy(task: str, limit: int | None) -> float:
    """Expected accuracy of a uniform guess over the first ``limit`` items of ``task``."""
    items = load_named_task(task, limit)
    return sum(1 / len(item.continuations) for item in items) / len(items)


def _stderr(task: str, metrics: dict) -> float:
    return metrics["acc_norm_stderr" if task in NORMED else "acc_stderr"]


def _ratio_stderr(ratio: float, terms: list[tuple[float, float]]) -> float:
    """Delta-method standard error of a ratio from (value, stderr) of its factors."""
    return abs(ratio) * math.sqrt(sum((se / value) ** 2 for value, se in terms))


def retention(teacher: dict, student: dict, chance: dict[str, float]) -> Retention:
    """Retention of ``student`` against ``teacher`` (two models' ``evaluate`` results) with the
    chance accuracy of every task in ``chance``."""
    ratio = ratio_se = None
    if PPL in teacher and PPL in student:
        ratio = student[PPL] / teacher[PPL]
        ratio_se = _ratio_stderr(ratio, [(student[PPL], student.get(PPL_STDERR, 0.0)),
                                         (teacher[PPL], teacher.get(PPL_STDERR, 0.0))])
    tasks = tuple(t for t in metric_names({"t": teacher, "s": student})
                  if t != PPL and t in teacher and t in student)
    kept = kept_se = None
    if tasks:
        gained = sum(headline(t, student[t]) - chance[t] for t in tasks)
        margin = sum(headline(t, teacher[t]) - chance[t] for t in tasks)
        gained_se = math.sqrt(sum(_stderr(t, student[t]) ** 2 for t in tasks))
        margin_se = math.sqrt(sum(_stderr(t, teacher[t]) ** 2 for t in tasks))
        if margin > 0:
            kept = gained / margin
            kept_se = math.hypot(gained_se / margin, kept * margin_se / margin)
    return Retention(ratio, ratio_se, kept, kept_se, tasks)


def retention_lines(name: str, kept: Retention) -> list[str]:
    """Markdown lines stating ``kept`` for the model called ``name``."""
    lines = []
    if kept.ppl_ratio is not None:
        lines.append(f"- {name}: held-out perplexity {kept.ppl_ratio:.2f}x the teacher's "
                     f"(± {kept.ppl_ratio_stderr:.2f})")
    if kept.accuracy_kept is not None:
        lines.append(f"- {name}: keeps {kept.accuracy_kept:.0%} (± "
                     f"{kept.accuracy_kept_stderr:.0%}) of the teacher's above-chance accuracy "
                     f"over {', '.join(kept.tasks)}")
    elif kept.tasks:
        lines.append(f"- {name}: the teacher is not above chance on {', '.join(kept.tasks)}, "
                     "so no share of its accuracy can be stated")
    return lines
