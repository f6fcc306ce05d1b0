"""Sizing a distillation to a time budget: time a few logit-KD steps and forwards of the real
teacher and pruned student on this machine (and quantizing the pruned student, where the recipe
quantizes), estimate the stages that follow, and pick the number of steps that fits what is
left of the budget."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..arch.modeling import load_model
from ..distill.api import DistillConfig
from ..distill.objectives import KDObjective, autocast_for
from ..eval.api import PPL
from ..eval.multiple_choice import plan_scoring
from ..eval.tasks import load_named_task
from ..quantize.api import quantize
from ..quantize.settings import QuantizeSettings
from .recipe import EvalStage

#: Fewest optimizer steps a sized run takes, however short the budget.
MIN_STEPS = 4
#: Measured seconds are scaled by this before sizing (noise, neighbours on a shared CPU).
SAFETY = 1.15
#: Fewest items per task a sized evaluation keeps (standard errors grow as 1/sqrt(items)).
MIN_EVAL_ITEMS = 40


@dataclass
class Speed:
    """What the probe measured on this machine."""

    step_s: float  # one optimizer step at the run's batch (extrapolated from 1 and 2 sequences)
    teacher_token_s: float  # no-grad forward seconds per token, evaluation precision
    student_token_s: float
    load_s: float  # loading teacher and student


def measure_speed(teacher: Path, student: Path, cfg: DistillConfig) -> Speed:
    """Time KD steps (forward, backward, AdamW) of 1 and 2 sequences after one warm-up step,
    and one no-grad forward of each model, on random tokens."""
    device = torch.device(cfg.device)
    t0 = time.perf_counter()
    teacher_model = load_model(teacher, device=cfg.device)[0]
    student_model = load_model(student, device=cfg.device)[0]
    load_s = time.perf_counter() - t0
    objective = KDObjective(student_model, teacher_model, cfg.kd_temperature, cfg.lm_loss_weight,
                            chunk_tokens=cfg.chunk_tokens).train()
    optimizer = torch.optim.AdamW(student_model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> torch.Tensor:
        return torch.randint(student_model.config.vocab_size, (n, cfg.seq_len),
                             generator=generator).to(device)

    def step(n: int) -> None:
        with autocast_for(device, cfg.precision):
            objective(ids(n)).total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(1)
    one, two = (_seconds(lambda n=n: step(n)) for n in (1, 2))
    tokens = 2 * cfg.seq_len
    with torch.no_grad(), autocast_for(device, "auto"):
        teacher_s = _seconds(lambda: teacher_model(input_ids=ids(2), use_cache=False))
        student_s = _seconds(lambda: student_model(input_ids=ids(2), use_cache=False))
    return Speed(step_seconds(one, two, cfg.batch_size * cfg.grad_accum), teacher_s / tokens,
                 student_s / tokens, load_s)


@dataclass
class QuantizeSpeed:
    """What quantizing the pruned student (the distilled one's shape) measured."""

    quantize_s: float  # the quantize stage: loading, quantizing and writing the student
    load_s: float | None  # loading the quantized checkpoint (decompression included)
    token_s: float | None  # its no-grad forward seconds per token (None: it is not evaluated)


def measure_quantize(student: Path, settings: QuantizeSettings, calib: Path | None,
                     seq_len: int, evaluated: bool) -> QuantizeSpeed:
    """Quantize ``student`` as the quantize stage will (into a scratch folder beside it, removed
    afterwards); where the quantized student is ``evaluated``, also time loading it and one
    no-grad forward of 2 x ``seq_len`` random tokens."""
    device = torch.device(settings.device)
    with tempfile.TemporaryDirectory(dir=student.parent, prefix=".sizing-") as scratch:
        out = Path(scratch) / "quantized"
        quantize_s = _seconds(lambda: quantize(student, out, settings, calib))
        if not evaluated:
            return QuantizeSpeed(quantize_s, None, None)
        t0 = time.perf_counter()
        model = load_model(out, device=settings.device)[0]
        load_s = time.perf_counter() - t0
        ids = torch.randint(model.config.vocab_size, (2, seq_len),
                            generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad(), autocast_for(device, "auto"):
            forward_s = _seconds(lambda: model(input_ids=ids, use_cache=False))
    return QuantizeSpeed(quantize_s, load_s, forward_s / ids.numel())


def step_seconds(one: float, two: float, sequences: int) -> float:
    """An optimizer step over ``sequences`` from steps of 1 and 2 sequences taking ``one`` and
    ``two`` seconds: a fixed part (the optimizer update, per-step work) plus a part per
    sequence. Where noise makes the second step no slower, every second counts as per
    sequence (the larger estimate)."""
    per_sequence = two - one
    if per_sequence <= 0:
        return two / 2 * sequences
    return one - per_sequence + per_sequence * sequences


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def eval_tokens(spec: EvalStage, tokenizer, config, tasks: list[str] | None = None) -> int:
    """Token positions one evaluation of ``tasks`` (default: the stage's) computes on a model
    with ``config``, padding included, as the evaluator plans them."""
    tasks = spec.tasks if tasks is None else tasks
    total = spec.ppl_seqs * spec.seq_len if PPL in tasks else 0
    for task in (t for t in tasks if t != PPL):
        requests = [(c, k) for item in load_named_task(task, spec.limit)
                    for c, k in zip(item.contexts, item.continuations)]
        total += plan_scoring(config, tokenizer, requests, spec.batch_size).positions
    return total


def eval_seconds(speed: Speed, teacher_tokens: int, student_tokens: list[int]) -> float:
    """Evaluating the teacher on ``teacher_tokens`` and one student-sized model on each of
    ``student_tokens``."""
    per_model_load = speed.load_s / 2
    return SAFETY * (teacher_tokens * speed.teacher_token_s
                     + sum(student_tokens) * speed.student_token_s
                     + (1 + len(student_tokens)) * per_model_load)


def quantize_seconds(quantized: QuantizeSpeed | None) -> float:
    """The quantize stage (none without one)."""
    return 0.0 if quantized is None else SAFETY * quantized.quantize_s


def quantized_eval_seconds(quantized: QuantizeSpeed | None, tokens: int) -> float:
    """Evaluating the quantized student on ``tokens`` (none where it is not evaluated)."""
    if quantized is None or quantized.token_s is None:
        return 0.0
    return SAFETY * (tokens * quantized.token_s + quantized.load_s)


def distill_overhead_seconds(speed: Speed, steps: int, cfg: DistillConfig) -> float:
    """Loading, checkpoints and the final save around the training steps (each costed like a
    model load: all are reads or writes of the same weights)."""
    checkpoints = steps // cfg.checkpoint_every + 1
    return SAFETY * speed.load_s * (2 + checkpoints)


def fit_steps(spare_s: float, speed: Speed, cfg: DistillConfig) -> int:
    """Optimizer steps that fit ``spare_s`` seconds, overhead included: at most the recipe's
    own, at least ``MIN_STEPS``."""
    most = cfg.train_config(world=1).steps
    per_step_s = SAFETY * (speed.step_s + speed.load_s / cfg.checkpoint_every)
    fitting = int((spare_s - distill_overhead_seconds(speed, 0, cfg)) // per_step_s)
    return min(most, max(MIN_STEPS, fitting))


def fit_eval_limit(spare_s: float, seconds_at: Callable[[int], float], limit: int | None,
                   least: int = MIN_EVAL_ITEMS, step: int = 10) -> int | None:
    """Items per task for an evaluation costed by ``seconds_at(limit)`` to fit ``spare_s``:
    ``limit`` itself when it fits (or is None: every item), else the largest multiple of
    ``step`` below it that fits, never fewer than ``least``."""
    if limit is None or limit <= least or seconds_at(limit) <= spare_s:
        return limit
    for items in range((limit - 1) // step * step, least, -step):
        if seconds_at(items) <= spare_s:
            return items
    return least


def fit_evaluation(spare_s: float, seconds_at: Callable[[int | None, list[str] | None], float],
                   limit: int | None, choices: list[list[str] | None]
                   ) -> tuple[int | None, list[str] | None]:
    """Items per task and the quantized student's tasks (``choices``, most first; None: the
    others' tasks) of the evaluation ``seconds_at(limit, tasks)`` that fits ``spare_s``: the
    first choice that fits at some limit :func:`fit_eval_limit` allows, else the last one
    at its fewest items."""
    for tasks in choices:
        items = fit_eval_limit(spare_s, lambda n, t=tasks: seconds_at(n, t), limit)
        if seconds_at(items, tasks) <= spare_s:
            return items, tasks
    return items, tasks
