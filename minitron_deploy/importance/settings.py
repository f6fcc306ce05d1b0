"""How importance is measured: the criterion and its knobs, the aggregation, the depth metric."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScoringSettings:
    """Scoring settings. Defaults follow the paper (activation criterion, batch L2 of
    sequence-mean |a|, depth by LM loss).

    ``seed`` drives the random criterion and MINI-LLM's perturbations; ``zo_steps`` and
    ``zo_eps`` are MINI-LLM's number of seeded perturbations and their size (gates 1 +- eps are
    rounded to the model dtype: keep eps >= 1e-2 in bf16); ``group_size`` is how many MLP
    neurons / embedding channels loss-delta removes at once.
    """

    criterion: str = "activation"
    seq_agg: str = "mean"
    batch_agg: str = "l2"
    depth_metric: str = "loss"
    depth_samples: int = 128
    seed: int = 0
    zo_steps: int = 256
    zo_eps: float = 1e-2
    group_size: int = 32
