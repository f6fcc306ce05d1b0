"""Streaming aggregation of activations: over the sequence per sample, then over the batch.

Defaults follow the Minitron paper (best of its study): mean of |a| over the sequence, then the
L2 norm over samples. With those defaults this equals ModelOpt's ``L2NormHook`` on batch-first
input (ModelOpt's hook expects Megatron's sequence-first layout and has no other options).
"""

from __future__ import annotations

import torch

SEQ_AGGREGATIONS = ("mean", "l2", "var")
BATCH_AGGREGATIONS = ("l2", "mean")


def reduce_sequence(x: torch.Tensor, how: str) -> torch.Tensor:
    """``[batch, seq, channels]`` -> ``[batch, channels]``, in float32 (accumulated in float32
    without materialising a float32 copy of a half-precision input)."""
    if how == "mean":
        return x.abs().mean(dim=1, dtype=torch.float32)
    if how == "l2":
        return torch.linalg.vector_norm(x, 2, dim=1, dtype=torch.float32)
    if how == "var":
        return x.float().var(dim=1, unbiased=False)
    raise ValueError(f"unknown sequence aggregation {how!r}; choose from {SEQ_AGGREGATIONS}")


class BatchAccumulator:
    """Accumulates per-sample statistics ``[batch, channels]`` into one score per channel."""

    def __init__(self, how: str = "l2") -> None:
        if how not in BATCH_AGGREGATIONS:
            raise ValueError(f"unknown batch aggregation {how!r}; choose from {BATCH_AGGREGATIONS}")
        self.how = how
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, per_sample: torch.Tensor) -> None:
        part = per_sample.pow(2).sum(0) if self.how == "l2" else per_sample.sum(0)
        self.total = part if self.total is None else self.total + part
        self.count += per_sample.shape[0]

    def result(self) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("no activations were collected")
        return self.total.sqrt() if self.how == "l2" else self.total / self.count
