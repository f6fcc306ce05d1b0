"""Perplexity on held-out text: exp of the mean next-token loss over packed sequences, with a
standard error that treats each sequence as one sample."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.likelihood import next_token_nll


def sequence_nll(model: nn.Module, sequences: torch.Tensor,
                 batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL (float64) and tokens scored, per sequence of ``sequences``
    [N, seq_len] (chunked loss, so a large vocabulary needs no full fp32 logits copy)."""
    device = next(model.parameters()).device
    nll, count = [], []
    with torch.no_grad():
        for batch in sequences.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            for row in range(batch.shape[0]):
                total, n = next_token_nll(logits[row:row + 1], batch[row:row + 1])
                nll.append(total)
                count.append(n)
    return torch.tensor(nll, dtype=torch.float64), torch.tensor(count, dtype=torch.float64)


def perplexity_with_stderr(model: nn.Module, sequences: torch.Tensor,
                           batch_size: int = 4) -> tuple[float, float]:
    """Token-weighted perplexity and its standard error (delta method on the ratio estimator
    of the mean token loss, sequences as samples; 0 for a single sequence)."""
    nll, count = sequence_nll(model, sequences, batch_size)
    mean = float(nll.sum() / count.sum())
    n = len(nll)
    if n < 2:
        return math.exp(mean), 0.0
    residual = (nll - mean * count) / count.mean()
    log_se = float(residual.std(correction=1)) / math.sqrt(n)
    return math.exp(mean), math.exp(mean) * log_se


def perplexity(model: nn.Module, sequences: torch.Tensor, batch_size: int = 4) -> float:
    """Token-weighted perplexity of ``model`` on ``sequences`` [N, seq_len]."""
    return perplexity_with_stderr(model, sequences, batch_size)[0]
