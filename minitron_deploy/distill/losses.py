"""Distillation losses.

``logit_kd_loss`` is forward KL(teacher || student) on temperature-softened logits, optionally
mixed with the plain next-token cross-entropy. It runs over token chunks and computes the
gradient in the same pass (a fused autograd function), so neither model's logits are ever
upcast to fp32 for the whole batch at once: peak extra memory is a few chunk-sized fp32
buffers plus one gradient in the student logits' own dtype (measurements in
benchmarks/distill/README.md).

``HiddenStateLoss`` matches student hidden states to the teacher's at mapped layers (cosine or
MSE), through a learned linear map where the widths differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import MinitronError

#: Label value ignored by the LM term (as in transformers).
IGNORE_INDEX = -100


@dataclass
class LossParts:
    """The total loss (differentiable) and its detached components per token (tensors, so
    that reading them does not force a device sync every step)."""

    total: torch.Tensor
    kd: torch.Tensor
    lm: torch.Tensor
    hidden: torch.Tensor | None = None


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    x = logits.float()
    return x if temperature == 1.0 else x / temperature


class _ChunkedKDLoss(torch.autograd.Function):
    """Loss and d(loss)/d(student logits) computed together, chunk by chunk."""

    @staticmethod
    def forward(ctx, student, teacher, labels, temperature, lm_weight, chunk_tokens):
        s2 = student.reshape(-1, student.shape[-1])
        t2 = teacher.reshape(-1, teacher.shape[-1]) if teacher is not None else None
        lab = labels.reshape(-1) if labels is not None else None
        n_tokens = s2.shape[0]
        n_labeled = int((lab != IGNORE_INDEX).sum()) if lab is not None else 0
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(s2) if need_grad else None
        kd_sum = torch.zeros((), dtype=torch.float64, device=s2.device)
        lm_sum = torch.zeros((), dtype=torch.float64, device=s2.device)
        kd_scale = (1.0 - lm_weight) * temperature / n_tokens  # d/ds T^2 KL = T (q - p)
        lm_scale = lm_weight / n_labeled if n_labeled else 0.0
        for start in range(0, n_tokens, chunk_tokens):
            sl = slice(start, start + chunk_tokens)
            # Work buffers are chunk-sized fp32 and updated in place: at most four live at once.
            log_q = torch.log_softmax(_scaled(s2[sl], temperature), dim=-1)
            rows = torch.arange(log_q.shape[0], device=log_q.device)
            lm_rows = None
            if lm_scale:
                tgt = lab[sl]
                mask = tgt != IGNORE_INDEX
                safe = tgt.clamp_min(0)
                log_r = log_q if temperature == 1.0 else torch.log_softmax(s2[sl].float(), dim=-1)
                lm_sum -= log_r[rows, safe][mask].sum(dtype=torch.float64)
                lm_rows = mask.to(log_q.dtype) * lm_scale
            if t2 is not None:
                log_p = torch.log_softmax(_scaled(t2[sl], temperature), dim=-1)
                p = log_p.exp()
                diff = log_p.sub_(log_q)  # log p - log q, in place
                kd_sum += torch.bmm(p[:, None, :], diff[:, :, None]).sum(dtype=torch.float64)
                del diff, log_p
            if not need_grad:
                continue
            if lm_rows is not None and temperature != 1.0:
                g = log_r.exp_().mul_(lm_rows[:, None])  # lm part: softmax(s) - onehot
                g[rows, safe] -= lm_rows
                if t2 is not None:
                    g.add_(log_q.exp_().sub_(p), alpha=kd_scale)
            else:  # one softmax serves both terms
                scale = kd_scale if t2 is not None else 0.0
                g = log_q.exp_()
                if lm_rows is not None:
                    g.mul_((lm_rows + scale)[:, None])
                    g[rows, safe] -= lm_rows
                else:
                    g.mul_(scale)
                if t2 is not None:
                    g.sub_(p, alpha=kd_scale)
            grad[sl] = g
        kd = kd_sum * temperature**2 / n_tokens
        lm = lm_sum / max(n_labeled, 1)
        total = (1.0 - lm_weight) * kd + lm_weight * lm
        if need_grad:
            ctx.save_for_backward(grad.view_as(student))
        return torch.stack([total, kd, lm]).float()

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out[0].to(grad.dtype), None, None, None, None, None


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                  labels: torch.Tensor | None = None, temperature: float = 1.0,
                  lm_weight: float = 0.0, chunk_tokens: int = 512) -> LossParts:
    """``(1 - w) * T^2 * KL(p_teacher^T || p_student^T) + w * CE(student, labels)``, per token.

    ``labels`` are the next-token targets already aligned with the logits (``IGNORE_INDEX``
    skipped); they are only needed when ``lm_weight > 0``. Without teacher logits only the LM
    term is computed (``lm_weight`` must then be 1).
    """
    if teacher_logits is None and lm_weight != 1.0:
        raise MinitronError("without teacher logits the LM loss weight must be 1")
    if teacher_logits is not None and student_logits.shape != teacher_logits.shape:
        raise MinitronError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ: do the models share a "
                            "tokenizer and vocabulary size?")
    if temperature <= 0:
        raise MinitronError(f"KD temperature must be positive, got {temperature}")
    if not 0.0 <= lm_weight <= 1.0:
        raise MinitronError(f"LM loss weight must be in [0, 1], got {lm_weight}")
    if lm_weight > 0 and labels is None:
        raise MinitronError("an LM loss weight needs labels")
    teacher = teacher_logits.detach() if teacher_logits is not None else None
    out = _ChunkedKDLoss.apply(student_logits, teacher, labels,
                               float(temperature), float(lm_weight), int(chunk_tokens))
    detached = out.detach()
    return LossParts(total=out[0], kd=detached[1], lm=detached[2])


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with every position's logits (last position ignored)."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def default_layer_map(student_layers: int, teacher_layers: int, count: int) -> list[tuple[int, int]]:
    """``count`` (student, teacher) hidden-state indices, evenly spaced, ending at the last
    layer of both (index 0 is the embedding output, as in ``output_hidden_states``)."""
    count = max(1, min(count, student_layers))
    return [(round(student_layers * k / count), round(teacher_layers * k / count))
            for k in range(1, count + 1)]


class HiddenStateLoss(nn.Module):
    """Cosine or MSE distance between mapped student and teacher hidden states.

    Where the widths differ, a learned ``Linear(student_hidden, teacher_hidden)`` per mapped
    layer projects the student's states (trained with the student, not saved into it).
    """

    def __init__(self, kind: str, layer_map: list[tuple[int, int]], student_hidden: int,
                 teacher_hidden: int):
        super().__init__()
        if kind not in ("cosine", "mse"):
            raise MinitronError(f"intermediate loss must be cosine or mse, got {kind!r}")
        self.kind = kind
        self.layer_map = list(layer_map)
        self.projections = nn.ModuleList(
            nn.Linear(student_hidden, teacher_hidden, bias=False) if student_hidden != teacher_hidden
            else nn.Identity() for _ in self.layer_map)
        for proj in self.projections:
            if isinstance(proj, nn.Linear):  # start as the channel-selection map when possible
                nn.init.eye_(proj.weight)

    def forward(self, student_states: tuple[torch.Tensor, ...],
                teacher_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        losses = []
        for (s_idx, t_idx), proj in zip(self.layer_map, self.projections):
            s = proj(student_states[s_idx].float())
            t = teacher_states[t_idx].detach().float()
            if self.kind == "cosine":
                losses.append((1.0 - F.cosine_similarity(s, t, dim=-1)).mean())
            else:
                losses.append(F.mse_loss(s, t))
        return torch.stack(losses).mean()
