"""The width-importance criteria, by name: each turns one calibration pass's inputs into the
same score tensors (``mlp.i``, ``heads.i``, ``kv_heads.i``, ``hidden``; higher = keep)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..arch import get_adapter
from ..core.errors import MinitronError
from .depth import first_samples
from .loss_delta import loss_deltas
from .magnitude import weight_norms
from .mini_llm import mini_llm_scores
from .random_scores import random_scores

if TYPE_CHECKING:
    from .settings import ScoringSettings


@dataclass
class CriterionInputs:
    """What a criterion may use: the model, the token batches the calibration pass ran, the
    activation scores of that pass, and the settings."""

    model: nn.Module
    batches: list[torch.Tensor]
    activation: dict[str, torch.Tensor]
    settings: ScoringSettings


@dataclass(frozen=True)
class Criterion:
    """A scoring function and the settings it depends on (recorded in the artifact)."""

    score: Callable[[CriterionInputs], dict[str, torch.Tensor]]
    knobs: tuple[str, ...] = ()
    needs_tokens: bool = False


CRITERIA: dict[str, Criterion] = {
    "activation": Criterion(lambda x: x.activation, ("seq_agg", "batch_agg")),
    "magnitude": Criterion(lambda x: weight_norms(x.model)),
    "random": Criterion(lambda x: random_scores(x.model, x.settings.seed), ("seed",)),
    "mini-llm": Criterion(
        lambda x: mini_llm_scores(x.model, x.batches, x.activation, x.settings.zo_steps,
                                  x.settings.zo_eps, x.settings.seed),
        ("seq_agg", "batch_agg", "seed", "zo_steps", "zo_eps"), needs_tokens=True),
    "loss-delta": Criterion(
        lambda x: loss_deltas(x.model, first_samples(x.batches, x.settings.depth_samples),
                              x.settings.group_size),
        ("group_size", "depth_samples"), needs_tokens=True),
}


def check_settings(settings: ScoringSettings) -> None:
    """Refuse settings changed to bad values after they were made (construction checks them)
    before any work."""
    type(settings).make(settings)


#: The width criteria that score mixture-of-experts models (the others gate dense MLPs).
MOE_CRITERIA = ("activation", "magnitude", "random")


def check_criterion_supports(config, criterion: str) -> None:
    """Refuse a criterion that does not score the experts of a mixture-of-experts model."""
    if "moe" in get_adapter(config).features(config) and criterion not in MOE_CRITERIA:
        raise MinitronError(f"criterion {criterion!r} does not score mixture-of-experts models "
                            f"({config.model_type}); use {', '.join(MOE_CRITERIA)}")


def criterion_meta(settings: ScoringSettings) -> dict:
    """The criterion's name and the settings it used, for the artifact's metadata."""
    return {"criterion": settings.criterion,
            **{k: getattr(settings, k) for k in CRITERIA[settings.criterion].knobs}}


def criterion_scores(inputs: CriterionInputs) -> dict[str, torch.Tensor]:
    """Width scores of ``inputs.settings.criterion``."""
    check_settings(inputs.settings)
    check_criterion_supports(inputs.model.config, inputs.settings.criterion)
    criterion = CRITERIA[inputs.settings.criterion]
    if criterion.needs_tokens and not inputs.batches:
        raise MinitronError(f"criterion {inputs.settings.criterion!r} needs the token ids of "
                            "the calibration batches; the forward loop passed none as input_ids")
    return criterion.score(inputs)
