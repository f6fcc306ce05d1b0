"""``distill()``: knowledge-distillation retraining of a pruned student from its teacher.

Checkpoints and the running log live in a work dir beside the output (``.<out>.partial``);
the output directory appears only when training completed, as a stock Hugging Face
checkpoint (with ``quantize``: the quantized checkpoint of that scheme, as ``minitron quantize``
writes it, the student having trained through its fake quantizers) plus ``train_log.jsonl``, ``loss_curve.png`` and ``distill.json`` in its ``minitron/``
subfolder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..arch.modeling import (
    check_not_inside,
    check_output_dir,
    load_config,
    load_model,
    save_checkpoint_atomic,
)
from ..arch.quantized import refuse_quantized
from ..core.artifacts import DISTILL_SUMMARY, LOSS_CURVE, TRAIN_LOG
from ..core.devices import device_memory
from ..core.dist import DistEnv, barrier, distributed_env, on_main_rank
from ..core.errors import MinitronError
from ..core.hub import resolve_model
from ..core.precision import agreed_precision, resolve_device
from ..data.text import check_seq_len, check_texts
from ..data.tokens import prepare_token_file
from .config import DistillConfig
from .losses import HiddenStateLoss, hidden_state_loss, read_pruning_record
from .memory import choose_strategy
from .objectives import KDObjective, LMObjective, check_router_aux, uses_bf16
from .parallel import (
    check_strategy,
    full_state_dict,
    is_sharded,
    plain_copy,
    shard_model,
    shard_objective,
)
from .plot import plot_loss_curve
from .trainer import TrainConfig, mean_losses, train


@dataclass
class DistillReport:
    out: Path
    steps: int
    tokens: int
    first_loss: float
    last_loss: float
    seconds: float


#: The packed training tokens inside the work dir (reused by a resumed run).
TOKEN_FILE = "tokens/train.bin"


def work_dir_for(out: Path) -> Path:
    """Where an unfinished run keeps its checkpoints and log."""
    return out.parent / f".{out.name}.partial"


def distill(teacher_dir: str | Path, student_dir: str | Path, data: str | Path,
            out_dir: str | Path, config: DistillConfig, resume: bool = False,
            on_step: Callable[[dict], None] | None = None,
            on_checkpoint: Callable[[int, nn.Module], None] | None = None) -> DistillReport:
    """Retrain ``student_dir`` from ``teacher_dir`` on local text ``data``; write ``out_dir``.

    ``on_step(record)`` receives every step's log record (progress reporting in pipelines);
    ``on_checkpoint(step, student)`` runs after every training checkpoint (evaluation during
    training; it may switch the student to eval mode, training resumes in train mode; with
    ``config.quantize`` the student computes through its fake quantizers).
    """
    config = replace(config, device=resolve_device(config.device))
    teacher_dir, student_dir = resolve_model(teacher_dir), resolve_model(student_dir)
    refuse_quantized("distill", teacher=teacher_dir, student=student_dir)
    if Path(out_dir).resolve() == teacher_dir.resolve():
        raise MinitronError("the output directory is the teacher; refusing to overwrite it")
    out = check_output_dir(out_dir, student_dir)
    check_not_inside(out, teacher_dir)
    check_texts(data, config.text_column, config.split)
    qad = _qad(config.quantize) if config.quantize else None
    teacher_cfg, student_cfg = load_config(teacher_dir), load_config(student_dir)
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
        raise MinitronError(f"teacher vocabulary ({teacher_cfg.vocab_size}) and student "
                            f"vocabulary ({student_cfg.vocab_size}) differ")
    for cfg in (teacher_cfg, student_cfg):
        check_seq_len(config.seq_len, cfg)
    check_router_aux(student_cfg, config.router_aux_loss_coef)
    env = distributed_env()
    train_cfg = config.train_config(env.world)
    work = work_dir_for(out)
    if work.exists() and not resume:
        raise MinitronError(f"an interrupted run exists in {work}: pass --resume to continue it "
                            "or delete it to start over")
    device = torch.device(config.device if env.world == 1 or config.device == "cpu"
                          else f"cuda:{env.local_rank}")
    precision = agreed_precision(device, config.precision)
    layout = resolve_layout(replace(config, precision=precision), env, teacher_cfg, student_cfg,
                            device)
    train_cfg = replace(train_cfg, strategy=layout.strategy, precision=precision,
                        activation_checkpointing=layout.activation_checkpointing)
    barrier(env)  # every rank checked the paths before any rank creates the work dir

    student, tokenizer = load_model(student_dir, device="cpu" if layout.strategy == "fsdp"
                                    else str(device))
    if tokenizer is None:
        raise MinitronError(f"{student_dir} has no tokenizer to tokenize the data")
    if qad is not None:
        qad.fake_quantize_student(student, config.quantize)
    needed = train_cfg.steps * train_cfg.batch_size * train_cfg.grad_accum * env.world
    started = time.perf_counter()
    with _discard_if_unresumable(work, env):
        sequences, val = prepare_token_file(
            data, tokenizer, config.seq_len, work / TOKEN_FILE, max_sequences=needed,
            heldout_fraction=config.val_fraction, seed=config.seed,
            heldout_sequences=config.val_sequences, text_column=config.text_column,
            split=config.split)
        if config.uses_teacher:
            teacher = _teacher(teacher_dir, config, train_cfg, layout, work, resume, sequences,
                               device, env)
            objective = KDObjective(student, teacher, config.kd_temperature,
                                    config.lm_loss_weight,
                                    _hidden_loss(config, student_dir, student_cfg,
                                                 teacher_cfg),
                                    config.intermediate_weight, config.chunk_tokens,
                                    config.router_aux_loss_coef)
        else:
            objective = LMObjective(student, config.chunk_tokens, config.router_aux_loss_coef)
        if layout.strategy == "fsdp":  # before validation, whose forward runs on every rank
            shard_objective(objective, device, uses_bf16(device, precision), env)
        else:
            objective.to(device)
        val_before = mean_losses(objective, val, train_cfg) if val is not None else None
        records = train(objective, sequences, train_cfg, work / "student", resume=resume,
                        desc="distill" if config.uses_teacher else "lm-retrain", on_step=on_step,
                        on_checkpoint=None if on_checkpoint is None
                        else lambda step: on_checkpoint(step, student), device=device)
        val_after = mean_losses(objective, val, train_cfg) if val is not None else None
    seconds = time.perf_counter() - started
    report = DistillReport(out, train_cfg.steps, records[-1]["tokens"], records[0]["loss"],
                           records[-1]["loss"], seconds)
    summary = {"teacher": str(Path(teacher_dir).resolve()),
               "student": str(Path(student_dir).resolve()), "data": str(Path(data).resolve()),
               "sequences_available": len(sequences), "config": asdict(config),
               "layout": asdict(layout), "precision": precision, "world_size": env.world,
               "steps": report.steps, "tokens": report.tokens,
               "first_loss": report.first_loss, "last_loss": report.last_loss,
               "train_seconds": seconds}
    if val is not None:
        summary["validation"] = {"sequences": len(val), "before": val_before, "after": val_after}

    def write_logs(folder: Path) -> None:
        shutil.copy2(work / "student" / TRAIN_LOG, folder / TRAIN_LOG)
        plot_loss_curve(records, folder / LOSS_CURVE,
                        f"{Path(student_dir).name}: distillation loss")

    write = save_checkpoint_atomic if qad is None else partial(
        qad.save_quantized_student, scheme=config.quantize, tokenizer=tokenizer)
    save_model(student, out, env, write, source_dir=student_dir,
               extra_json={DISTILL_SUMMARY: summary}, write_artifacts=write_logs)
    on_main_rank(lambda: shutil.rmtree(work, ignore_errors=True))
    return report


@dataclass
class Layout:
    """How a run is spread over the ranks (``parallel.py``)."""

    strategy: str
    shard_teacher: bool = False
    activation_checkpointing: bool = False


def resolve_layout(config: DistillConfig, env: DistEnv, teacher_cfg, student_cfg,
                   device: torch.device) -> Layout:
    """The strategy, teacher placement and activation checkpointing of this run: what the
    config fixes, and for its ``auto`` parts the memory planner's first choice that fits this
    many ranks of this device's memory (ranks on one host share its RAM on the CPU). Refuses,
    before anything is loaded, a run that fits no way, saying what would."""

    check_strategy(config.strategy, env)
    available = device_memory(str(device))
    if available is None:
        raise MinitronError(f"device {device} is not available here")
    if device.type == "cpu" and env.world > 1:
        available //= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    choice = choose_strategy(teacher_cfg, student_cfg, config, env.world, available,
                             gpu=device.type == "cuda")
    check_strategy(choice.strategy, env)
    return Layout(choice.strategy, choice.teacher_sharded, choice.activation_checkpointing)


def save_model(model: nn.Module, out: Path, env: DistEnv,
               write: Callable[..., object] = save_checkpoint_atomic, **kwargs) -> None:
    """``write(model, out, **kwargs)`` (``save_checkpoint_atomic``, or the quantized writer)
    of a possibly sharded model: gathered onto rank 0 (a stock, unsharded checkpoint;
    collective), then written by rank 0 while the others wait (``core.dist.on_main_rank``)."""
    if is_sharded(model):
        state = full_state_dict(model)
        model = plain_copy(model, state) if env.is_main else model
    on_main_rank(lambda: write(model, out, **kwargs))


def _qad(scheme: str):
    """The quantization-aware distillation module (``quantize/qad.py``), or a one-line refusal
    where compressed-tensors, which it trains through and writes with, is missing."""
    try:
        from ..quantize import qad
    except ImportError as exc:
        raise MinitronError(f"quantize {scheme} needs compressed-tensors (pip install "
                            f"'minitron-deploy[quantize]'): {exc}") from None
    return qad


@contextlib.contextmanager
def _discard_if_unresumable(work: Path, env: DistEnv):
    """On failure, remove a work dir this run created if it holds nothing to resume from
    (no checkpoint, no corrected teacher): a failed fresh run leaves no partial output."""
    fresh = not work.exists()
    try:
        yield
    except BaseException:
        if env.is_main and fresh and work.is_dir() and not any(work.glob("*/latest")) \
                and not (work / "teacher-corrected").exists():
            shutil.rmtree(work, ignore_errors=True)
        raise


def _teacher(teacher_dir, config: DistillConfig, train_cfg: TrainConfig, layout: Layout,
             work: Path, resume: bool, sequences, device: torch.device, env: DistEnv):
    """The frozen teacher (bf16 where the run computes in bf16), after teacher correction when
    asked; sharded for forward only when the layout says so."""
    bf16 = uses_bf16(device, train_cfg.precision) and device.type == "cuda"
    source = teacher_dir
    if config.teacher_correction_steps > 0:
        source = work / "teacher-corrected"
        if not (source / "config.json").is_file():
            _correct_teacher(teacher_dir, config, train_cfg, work, resume, sequences, device, env)
    dtype = "bf16" if bf16 else "fp32"
    if not layout.shard_teacher:
        return load_model(source, dtype=dtype, device=str(device))[0]
    teacher = load_model(source, dtype=dtype, device="cpu")[0]
    shard_model(teacher, device, bf16, env)
    return teacher


def _correct_teacher(teacher_dir, config: DistillConfig, train_cfg: TrainConfig, work: Path,
                     resume: bool, sequences, device: torch.device, env: DistEnv) -> None:
    """A short LM fine-tune of the teacher on the distillation data, written to
    ``work/teacher-corrected`` (collective, same strategy as the distillation)."""
    teacher, _ = load_model(teacher_dir, device="cpu" if train_cfg.strategy == "fsdp"
                            else str(device))
    tc = replace(train_cfg, steps=config.teacher_correction_steps,
                 lr=config.teacher_correction_lr, seed=config.seed + 1, warmup_steps=None,
                 min_lr_ratio=TrainConfig.min_lr_ratio, weight_decay=TrainConfig.weight_decay,
                 max_grad_norm=TrainConfig.max_grad_norm, quantize=None)
    train(LMObjective(teacher, config.chunk_tokens), sequences, tc,
          work / "teacher-correction", resume=resume, desc="teacher-correction", device=device)
    save_model(teacher, work / "teacher-corrected", env, source_dir=teacher_dir)
    on_main_rank(lambda: shutil.rmtree(work / "teacher-correction", ignore_errors=True))


def _hidden_loss(config: DistillConfig, student_dir, student_cfg,
                 teacher_cfg) -> HiddenStateLoss | None:
    """The hidden-state term, pairing student layers with the teacher layers they were pruned
    from (its pruning record) and starting its projections as the kept-channel selection."""
    if config.intermediate_loss is None:
        return None
    return hidden_state_loss(config.intermediate_loss, config.intermediate_layers, student_cfg,
                             teacher_cfg, read_pruning_record(student_dir))
