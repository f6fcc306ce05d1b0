"""Perplexity on held-out text: exp of the mean next-token loss over packed sequences."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..likelihood import next_token_nll


def perplexity(model: nn.Module, sequences: torch.Tensor, batch_size: int = 4) -> float:
    """Token-weighted perplexity of ``model`` on ``sequences`` [N, seq_len] (chunked loss, so a
    large vocabulary does not need a full fp32 logits copy)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in sequences.split(batch_size):
            batch = batch.to(device)
            nll, n = next_token_nll(model(input_ids=batch, use_cache=False).logits, batch)
            total += nll
            count += n
    return math.exp(total / count)
