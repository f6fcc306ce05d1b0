"""Next-token targets and log-likelihood, shared by training losses and evaluation."""

from __future__ import annotations

import torch

#: Label value ignored by the LM term (as in transformers).
IGNORE_INDEX = -100


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with every position's logits (last position ignored)."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor,
                   chunk_tokens: int = 512) -> tuple[float, int]:
    """Summed negative log-likelihood of every next token of ``input_ids`` under ``logits``
    [B, S, V], and the number of tokens scored; fp32 log-softmax over chunks of tokens, so a
    large vocabulary never needs an fp32 copy of all the logits."""
    flat = logits.reshape(-1, logits.shape[-1])
    labels = shifted_labels(input_ids).reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for start in range(0, flat.shape[0], chunk_tokens):
        target = labels[start:start + chunk_tokens]
        keep = target != IGNORE_INDEX
        log_p = torch.log_softmax(flat[start:start + chunk_tokens][keep].float(), dim=-1)
        total -= log_p.gather(1, target[keep, None]).sum(dtype=torch.float64)
    return float(total), int((labels != IGNORE_INDEX).sum())
