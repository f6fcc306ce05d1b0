"""What one training step minimises: logit KD (with optional LM and hidden-state terms),
plain LM loss, or a ModelOpt ``DistillationModel``'s own KD loss.

Every objective is an ``nn.Module`` whose forward maps ``input_ids`` to ``LossParts`` and whose
trainable parameters (``requires_grad``) are what the optimizer updates; ``.student`` is the
model that gets saved. Frozen teachers are kept out of the module tree."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import torch
from torch import nn

from ..arch import get_adapter
from ..core.errors import MinitronError
from ..core.likelihood import shifted_labels
from ..core.precision import resolve_precision
from .losses import HiddenStateLoss, LossParts, logit_kd_loss


class Objective(Protocol):
    student: nn.Module

    def __call__(self, input_ids: torch.Tensor) -> LossParts: ...

    def named_parameters(self): ...


class KDObjective(nn.Module):
    """Forward KL from a frozen teacher, plus ``lm_weight`` x LM loss and an optional weighted
    hidden-state loss. Its parameters are the student's and any learned projections."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 1.0,
                 lm_weight: float = 0.0, hidden_loss: HiddenStateLoss | None = None,
                 hidden_weight: float = 1.0, chunk_tokens: int = 512,
                 router_aux_weight: float = 0.0):
        super().__init__()
        self.student = student
        self.hidden_loss = hidden_loss
        self.router_aux_weight = router_aux_weight
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule
        self.temperature = temperature
        self.lm_weight = lm_weight
        self.hidden_weight = hidden_weight
        self.chunk_tokens = chunk_tokens

    def forward(self, input_ids: torch.Tensor) -> LossParts:
        want_states = self.hidden_loss is not None
        with torch.no_grad():
            t_out = self._teacher[0](input_ids=input_ids, use_cache=False,
                                     output_hidden_states=want_states)
        s_out = self.student(input_ids=input_ids, use_cache=False, output_hidden_states=want_states,
                             **_router_kwargs(self.router_aux_weight))
        labels = shifted_labels(input_ids) if self.lm_weight else None
        parts = logit_kd_loss(s_out.logits, t_out.logits, labels, self.temperature,
                              self.lm_weight, self.chunk_tokens)
        if self.hidden_loss is not None:
            hidden = self.hidden_loss(s_out.hidden_states, t_out.hidden_states)
            parts = LossParts(total=parts.total + self.hidden_weight * hidden, kd=parts.kd,
                              lm=parts.lm, hidden=hidden.detach())
        return _with_router_aux(parts, s_out, self.router_aux_weight)


class LMObjective(nn.Module):
    """Next-token cross-entropy only (retraining without a teacher, teacher correction)."""

    def __init__(self, model: nn.Module, chunk_tokens: int = 512, router_aux_weight: float = 0.0):
        super().__init__()
        self.student = model
        self.chunk_tokens = chunk_tokens
        self.router_aux_weight = router_aux_weight

    def forward(self, input_ids: torch.Tensor) -> LossParts:
        out = self.student(input_ids=input_ids, use_cache=False,
                           **_router_kwargs(self.router_aux_weight))
        parts = logit_kd_loss(out.logits, None, shifted_labels(input_ids), lm_weight=1.0,
                              chunk_tokens=self.chunk_tokens)
        return _with_router_aux(parts, out, self.router_aux_weight)


def check_router_aux(config, weight: float) -> None:
    """Refuse a router load-balancing loss for a model without experts, in one line."""
    if weight and "moe" not in get_adapter(config).features(config):
        raise MinitronError(f"router_aux_loss_coef={weight} needs a mixture-of-experts student; "
                            f"{config.model_type} has no router")


def _router_kwargs(weight: float) -> dict:
    """Ask an MoE model for its router logits (and so its ``aux_loss``) when they are used."""
    return {"output_router_logits": True} if weight else {}


def _with_router_aux(parts: LossParts, out, weight: float) -> LossParts:
    """``parts`` plus ``weight`` x the model's own load-balancing loss (transformers'
    ``aux_loss``: experts' routed-token shares times their mean router probabilities)."""
    if not weight:
        return parts
    return LossParts(total=parts.total + weight * out.aux_loss, kd=parts.kd, lm=parts.lm,
                     hidden=parts.hidden)


class ModelOptObjective(nn.Module):
    """A ``modelopt.torch.distill`` ``DistillationModel``: its forward runs teacher and
    student, ``compute_kd_loss()`` returns the configured criterion's loss. ``student`` is the
    DistillationModel itself; ``mtd.export`` it to get the plain student back."""

    def __init__(self, distillation_model: nn.Module):
        super().__init__()
        self.model = distillation_model
        self.student = distillation_model

    def forward(self, input_ids: torch.Tensor) -> LossParts:
        self.model(input_ids=input_ids, use_cache=False)
        loss = self.model.compute_kd_loss()
        zero = torch.zeros((), device=loss.device)
        return LossParts(total=loss, kd=loss.detach(), lm=zero)


PRECISIONS = ("auto", "bf16", "fp32")


def uses_bf16(device: torch.device, precision: str) -> bool:
    """bf16 compute for "bf16", and for "auto" where bf16 is faster on ``device`` (GPUs that
    support it; CPUs where a probe measured it faster, e.g. with AMX)."""
    return resolve_precision(device, precision) == "bf16"


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast where ``uses_bf16``; plain fp32 otherwise."""
    if uses_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
