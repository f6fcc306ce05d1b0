"""Distillation losses.

``logit_kd_loss`` is forward KL(teacher || student) on temperature-softened logits, optionally
mixed with the plain next-token cross-entropy. It runs over token chunks and computes the
gradient in the same pass (a fused autograd function), so neither model's logits are ever
upcast to fp32 for the whole batch at once: peak extra memory is a few chunk-sized fp32
buffers plus one gradient in the student logits' own dtype (measurements in
benchmarks/distill/README.md).

``HiddenStateLoss`` matches student hidden states to the teacher's at mapped layers (cosine or
MSE), through a learned linear map where the channels differ. ``hidden_state_loss`` builds it
from the student's pruning record when there is one: states pair by the teacher layer each
student layer came from, and the maps start as the kept-channel selection.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..arch import get_adapter
from ..core.artifacts import PRUNING_RECORD, artifact_path
from ..core.errors import MinitronError
from ..core.likelihood import IGNORE_INDEX
from ..core.shape import ModelShape


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


def default_layer_map(student_layers: int, teacher_layers: int, count: int) -> list[tuple[int, int]]:
    """``count`` (student, teacher) hidden-state indices, evenly spaced, ending at the last
    layer of both (index 0 is the embedding output, as in ``output_hidden_states``)."""
    count = max(1, min(count, student_layers))
    return [(round(student_layers * k / count), round(teacher_layers * k / count))
            for k in range(1, count + 1)]


def pruned_layer_map(kept_layers: Sequence[int], teacher_layers: int,
                     count: int) -> list[tuple[int, int]]:
    """``count`` (student, teacher) hidden-state indices, evenly spaced over the student's layers,
    each pairing a student state with the teacher state of the layer it was trimmed from
    (student layer ``j`` is teacher layer ``kept_layers[j]``).

    The last state of both models is taken after the final norm (transformers replaces it with
    the normed output) while the others are raw residual streams, so the student's last state
    always pairs with the teacher's last, even when the teacher's last layers were dropped.
    """
    student_layers = len(kept_layers)
    spaced = default_layer_map(student_layers, teacher_layers, count)  # student indices >= 1
    return [(s, teacher_layers if s == student_layers else kept_layers[s - 1] + 1)
            for s, _ in spaced]


def _projection(student_hidden: int, teacher_hidden: int, kept_hidden: torch.Tensor | None,
                scale: float) -> nn.Module:
    """``Linear(student_hidden, teacher_hidden)`` starting as ``scale`` x the channel selection
    (student channel ``j`` -> teacher channel ``kept_hidden[j]``; the first channels when
    ``kept_hidden`` is None), or ``Identity`` where that selection is the identity."""
    kept = torch.arange(student_hidden) if kept_hidden is None else kept_hidden
    if student_hidden == teacher_hidden and scale == 1.0 \
            and torch.equal(kept, torch.arange(student_hidden)):
        return nn.Identity()
    proj = nn.Linear(student_hidden, teacher_hidden, bias=False)
    with torch.no_grad():
        if kept_hidden is None:
            nn.init.eye_(proj.weight)
            proj.weight.mul_(scale)
        else:
            proj.weight.zero_()
            proj.weight[kept_hidden, torch.arange(student_hidden)] = scale
    return proj


class HiddenStateLoss(nn.Module):
    """Cosine or MSE distance between mapped student and teacher hidden states.

    Where the student's channels are not the teacher's (other width, or kept channels out of
    order), a learned ``Linear(student_hidden, teacher_hidden)`` per mapped layer projects the
    student's states (trained with the student, not saved into it). It starts as the selection
    of the teacher channels in ``kept_hidden`` (student channel ``j`` is teacher channel
    ``kept_hidden[j]``; the first channels when None), times ``scales[k]`` for pair ``k``.
    """

    def __init__(self, kind: str, layer_map: list[tuple[int, int]], student_hidden: int,
                 teacher_hidden: int, kept_hidden: torch.Tensor | None = None,
                 scales: Sequence[float] | None = None):
        super().__init__()
        if kind not in ("cosine", "mse"):
            raise MinitronError(f"intermediate loss must be cosine or mse, got {kind!r}")
        if kept_hidden is not None and (len(kept_hidden) != student_hidden
                                        or int(kept_hidden.max()) >= teacher_hidden):
            raise MinitronError(f"{len(kept_hidden)} kept hidden channels do not map a "
                                f"{student_hidden}-wide student into a {teacher_hidden}-wide "
                                "teacher")
        self.kind = kind
        self.layer_map = list(layer_map)
        scales = [1.0] * len(self.layer_map) if scales is None else list(scales)
        self.projections = nn.ModuleList(
            _projection(student_hidden, teacher_hidden, kept_hidden, scale) for scale in scales)

    def pair_losses(self, student_states: tuple[torch.Tensor, ...],
                    teacher_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The distance at every mapped pair, in ``layer_map`` order."""
        losses = []
        for (s_idx, t_idx), proj in zip(self.layer_map, self.projections):
            s = proj(student_states[s_idx].float())
            t = teacher_states[t_idx].detach().float()
            if self.kind == "cosine":
                losses.append((1.0 - F.cosine_similarity(s, t, dim=-1)).mean())
            else:
                losses.append(F.mse_loss(s, t))
        return torch.stack(losses)

    def forward(self, student_states: tuple[torch.Tensor, ...],
                teacher_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.pair_losses(student_states, teacher_states).mean()


def read_pruning_record(student_dir: str | Path) -> dict | None:
    """The parsed pruning record of ``student_dir`` (``minitron/minitron.json``, or a top-level
    one in folders pruned by older versions), or None when it has none."""
    path = artifact_path(student_dir, PRUNING_RECORD)
    if not path.is_file():  # older versions wrote it at the top level
        path = Path(student_dir) / PRUNING_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MinitronError(f"{path} is not valid JSON ({exc})") from exc


def _record_mismatch(pruning: dict, student: ModelShape, teacher: ModelShape) -> str | None:
    """Why ``pruning`` does not describe trimming ``teacher`` into ``student``, or None."""
    missing = [k for k in ("source_shape", "target_shape", "kept", "rescale_norms")
               if k not in pruning]
    if missing:
        raise MinitronError(f"the student's {PRUNING_RECORD} lacks {', '.join(missing)}")
    if pruning["source_shape"] != teacher.as_dict():
        return f"it was pruned from a {pruning['source_shape']} model, not this teacher"
    if pruning["target_shape"] != student.as_dict():
        return f"it records a {pruning['target_shape']} student, not this one"
    return None


def _final_state_scale(pruning: dict, student: ModelShape, teacher: ModelShape,
                       teacher_cfg) -> float:
    """Factor taking the student's last (final-normed) state to the teacher's at kept channels.

    The reference is the teacher with the pruned channels zeroed, which trimming reproduces.
    Trimming an RMSNorm family without ``rescale_norms`` normalizes over the kept channels only,
    so its normed outputs are sqrt(H_kept / H) times that reference's: this factor undoes it.
    Rescaled norms already match it (factor 1); LayerNorm families, which no scale matches, get
    1. The other states are residual streams, which no norm scales.
    """
    if pruning["rescale_norms"] or get_adapter(teacher_cfg).norm_kind != "rms":
        return 1.0
    return math.sqrt(teacher.hidden_size / student.hidden_size)


def hidden_state_loss(kind: str, count: int, student_cfg, teacher_cfg,
                      pruning: dict | None) -> HiddenStateLoss:
    """The hidden-state loss for distilling ``teacher_cfg``'s model into ``student_cfg``'s.

    With the student's pruning record (``read_pruning_record``), states pair by source layer
    (``pruned_layer_map``) and the projections start as the kept-channel selection, so that at
    initialisation they reproduce the teacher with the pruned units zeroed. Without one, or
    when it describes another teacher or student (then with a warning), the states pair evenly
    spaced (``default_layer_map``) and the projections start as the first-channel selection.
    """
    student = ModelShape.from_config(student_cfg)
    teacher = ModelShape.from_config(teacher_cfg)
    reason = None if pruning is None else _record_mismatch(pruning, student, teacher)
    if pruning is None or reason is not None:
        if reason is not None:
            warnings.warn(f"ignoring the student's {PRUNING_RECORD} ({reason}): intermediate "
                          "states pair evenly spaced layers", stacklevel=2)
        return HiddenStateLoss(kind, default_layer_map(student.num_layers, teacher.num_layers,
                                                       count), student.hidden_size,
                               teacher.hidden_size)
    layer_map = pruned_layer_map(pruning["kept"]["layers"], teacher.num_layers, count)
    final = _final_state_scale(pruning, student, teacher, teacher_cfg)
    scales = [final if s == student.num_layers else 1.0 for s, _ in layer_map]
    return HiddenStateLoss(kind, layer_map, student.hidden_size, teacher.hidden_size,
                           torch.tensor(pruning["kept"]["hidden"], dtype=torch.long), scales)
