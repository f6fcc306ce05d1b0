"""``distill()``: knowledge-distillation retraining of a pruned student from its teacher.

Checkpoints and the running log live in a work dir beside the output (``.<out>.partial``);
the output directory appears only when training completed, as a stock Hugging Face
checkpoint plus ``train_log.jsonl``, ``loss_curve.png`` and ``distill.json``.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..data import check_seq_len, load_texts, pack_tokens, split_documents
from ..errors import MinitronError
from ..modeling import (check_not_inside, check_output_dir, load_config, load_model,
                        save_checkpoint_atomic)
from .losses import HiddenStateLoss, default_layer_map
from .objectives import KDObjective, LMObjective
from .plot import plot_loss_curve
from .trainer import LOG_NAME, TrainConfig, distributed_env, mean_losses, train


@dataclass
class DistillConfig:
    """Everything ``minitron distill`` takes besides paths. Give ``tokens`` or ``steps``."""

    tokens: int | None = None
    steps: int | None = None
    seq_len: int = 512
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    kd_temperature: float = 1.0
    lm_loss_weight: float = 0.0
    intermediate_loss: str | None = None  # "cosine" or "mse"
    intermediate_weight: float = 1.0
    intermediate_layers: int = 1
    teacher_correction_steps: int = 0
    teacher_correction_lr: float = 1e-5
    chunk_tokens: int = 512
    device: str = "cpu"
    precision: str = "auto"
    val_fraction: float = 0.0  # documents held out to report validation losses before/after
    val_sequences: int = 16

    @property
    def uses_teacher(self) -> bool:
        return self.lm_loss_weight < 1.0 or self.intermediate_loss is not None

    def train_config(self, world: int) -> TrainConfig:
        """TrainConfig with ``steps`` resolved from the token budget."""
        if (self.tokens is None) == (self.steps is None):
            raise MinitronError("give exactly one of --tokens and --steps")
        per_step = self.batch_size * self.grad_accum * self.seq_len * world
        steps = self.steps if self.steps is not None else math.ceil(self.tokens / per_step)
        shared = {f.name for f in fields(TrainConfig)} - {"steps"}
        return TrainConfig(steps=steps, **{k: getattr(self, k) for k in shared if hasattr(self, k)})


@dataclass
class DistillReport:
    out: Path
    steps: int
    tokens: int
    first_loss: float
    last_loss: float
    seconds: float


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
    training; it may switch the student to eval mode, training resumes in train mode).
    """
    if Path(out_dir).resolve() == Path(teacher_dir).resolve():
        raise MinitronError("the output directory is the teacher; refusing to overwrite it")
    out = check_output_dir(out_dir, student_dir)
    check_not_inside(out, teacher_dir)
    teacher_cfg, student_cfg = load_config(teacher_dir), load_config(student_dir)
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
        raise MinitronError(f"teacher vocabulary ({teacher_cfg.vocab_size}) and student "
                            f"vocabulary ({student_cfg.vocab_size}) differ")
    for cfg in (teacher_cfg, student_cfg):
        check_seq_len(config.seq_len, cfg)
    env = distributed_env()
    train_cfg = config.train_config(env.world)
    work = work_dir_for(out)
    if work.exists() and not resume:
        raise MinitronError(f"an interrupted run exists in {work}: pass --resume to continue it "
                            "or delete it to start over")
    device = torch.device(config.device if env.world == 1 or config.device == "cpu"
                          else f"cuda:{env.local_rank}")

    student, tokenizer = load_model(student_dir, device=str(device))
    if tokenizer is None:
        raise MinitronError(f"{student_dir} has no tokenizer to tokenize the data")
    needed = train_cfg.steps * train_cfg.batch_size * train_cfg.grad_accum * env.world
    train_texts, val_texts = split_documents(load_texts(data), config.val_fraction, config.seed)
    sequences = pack_tokens(train_texts, tokenizer, config.seq_len, needed, seed=config.seed)
    val = (pack_tokens(val_texts, tokenizer, config.seq_len, config.val_sequences, config.seed)
           if val_texts else None)
    started = time.perf_counter()
    with _discard_if_unresumable(work):
        if config.uses_teacher:
            teacher = _teacher(teacher_dir, config, work, resume, sequences, device)
            objective = KDObjective(student, teacher, config.kd_temperature,
                                    config.lm_loss_weight,
                                    _hidden_loss(config, student_cfg, teacher_cfg),
                                    config.intermediate_weight, config.chunk_tokens).to(device)
        else:
            objective = LMObjective(student, config.chunk_tokens)
        val_before = mean_losses(objective, val, train_cfg) if val is not None else None
        records = train(objective, sequences, train_cfg, work / "student", resume=resume,
                        desc="distill" if config.uses_teacher else "lm-retrain", on_step=on_step,
                        on_checkpoint=None if on_checkpoint is None
                        else lambda step: on_checkpoint(step, student))
    seconds = time.perf_counter() - started
    report = DistillReport(out, train_cfg.steps, records[-1]["tokens"], records[0]["loss"],
                           records[-1]["loss"], seconds)
    if env.is_main:
        summary = {"teacher": str(Path(teacher_dir).resolve()),
                   "student": str(Path(student_dir).resolve()), "data": str(Path(data).resolve()),
                   "sequences_available": len(sequences), "config": asdict(config),
                   "steps": report.steps, "tokens": report.tokens,
                   "first_loss": report.first_loss, "last_loss": report.last_loss,
                   "train_seconds": seconds}
        if val is not None:
            summary["validation"] = {"sequences": len(val), "before": val_before,
                                     "after": mean_losses(objective, val, train_cfg)}

        def write_logs(tmp: Path) -> None:
            shutil.copy2(work / "student" / LOG_NAME, tmp / LOG_NAME)
            plot_loss_curve(records, tmp / "loss_curve.png",
                            f"{Path(student_dir).name}: distillation loss")

        save_checkpoint_atomic(student, out, source_dir=student_dir,
                               extra_json={"distill.json": summary}, write_extra=write_logs)
        shutil.rmtree(work, ignore_errors=True)
    return report


@contextlib.contextmanager
def _discard_if_unresumable(work: Path):
    """On failure, remove a work dir this run created if it holds nothing to resume from
    (no checkpoint, no corrected teacher): a failed fresh run leaves no partial output."""
    fresh = not work.exists()
    try:
        yield
    except BaseException:
        if fresh and work.is_dir() and not any(work.glob("*/latest")) \
                and not (work / "teacher-corrected").exists():
            shutil.rmtree(work, ignore_errors=True)
        raise


def _teacher(teacher_dir, config: DistillConfig, work: Path, resume: bool,
             sequences: torch.Tensor, device: torch.device):
    """The frozen teacher (bf16 on GPU), after teacher correction when asked."""
    dtype = "bf16" if device.type == "cuda" else "fp32"
    if config.teacher_correction_steps <= 0:
        return load_model(teacher_dir, dtype=dtype, device=str(device))[0]
    corrected = work / "teacher-corrected"
    if not (corrected / "config.json").is_file():
        teacher, _ = load_model(teacher_dir, device=str(device))
        tc = TrainConfig(steps=config.teacher_correction_steps, batch_size=config.batch_size,
                         grad_accum=config.grad_accum, lr=config.teacher_correction_lr,
                         checkpoint_every=config.checkpoint_every, seed=config.seed + 1,
                         precision=config.precision)
        train(LMObjective(teacher, config.chunk_tokens), sequences, tc,
              work / "teacher-correction", resume=resume, desc="teacher-correction")
        if distributed_env().is_main:
            save_checkpoint_atomic(teacher, corrected, source_dir=teacher_dir)
        shutil.rmtree(work / "teacher-correction", ignore_errors=True)
    return load_model(corrected, dtype=dtype, device=str(device))[0]


def _hidden_loss(config: DistillConfig, student_cfg, teacher_cfg) -> HiddenStateLoss | None:
    if config.intermediate_loss is None:
        return None
    layer_map = default_layer_map(student_cfg.num_hidden_layers, teacher_cfg.num_hidden_layers,
                                  config.intermediate_layers)
    return HiddenStateLoss(config.intermediate_loss, layer_map, student_cfg.hidden_size,
                           teacher_cfg.hidden_size)

