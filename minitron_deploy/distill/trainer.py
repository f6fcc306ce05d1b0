"""The training loop shared by distillation, LM retraining and teacher correction.

AdamW with linear warmup and cosine decay, gradient accumulation and clipping, bf16 autocast
where it is faster (``precision.py``), sharded checkpoints every N steps and exact resumption:
data order is a function of the step, and weights, optimizer and RNG state are restored, so on
CPU a resumed run reproduces an uninterrupted one step for step. Under ``torchrun`` each rank takes its own
slice of every global batch, with DDP or FSDP2 (``parallel.py``). Logs are JSONL; a progress
bar shows loss, tokens/s and ETA.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.artifacts import TRAIN_LOG
from ..core.dist import all_mean, barrier, distributed_env, on_main_rank
from ..core.errors import MinitronError
from ..core.precision import agreed_precision
from .checkpoint import (
    TrainState,
    load_training_checkpoint,
    run_settings,
    save_training_checkpoint,
)
from .objectives import autocast_for, uses_bf16
from .parallel import check_strategy, shard_objective, wrap_ddp
from .schedule import TrainConfig, lr_at


def sample_indices(n_sequences: int, start: int, count: int, seed: int) -> torch.Tensor:
    """Sequence indices ``start .. start+count`` of an endless stream of epochs, each a fresh
    seeded permutation: the same position always names the same sequence."""
    out = []
    for pos in range(start, start + count):
        epoch, offset = divmod(pos, n_sequences)
        out.append(int(_epoch_order(n_sequences, seed + epoch)[offset]))
    return torch.tensor(out, dtype=torch.long)


@functools.lru_cache(maxsize=2)
def _epoch_order(n_sequences: int, seed: int) -> torch.Tensor:
    """The seeded permutation of one epoch, made once rather than at every micro-batch."""
    return torch.randperm(n_sequences, generator=torch.Generator().manual_seed(seed))


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _read_log(path: Path, upto_step: int) -> list[dict]:
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= upto_step]


def train(objective: nn.Module, sequences, cfg: TrainConfig, work_dir: Path,
          resume: bool = False, desc: str = "distill",
          on_step: Callable[[dict], None] | None = None,
          on_checkpoint: Callable[[int], None] | None = None,
          device: torch.device | None = None) -> list[dict]:
    """Train ``objective``'s trainable parameters on ``sequences`` [N, seq_len] for ``cfg.steps``.

    ``sequences`` is anything indexable by a tensor of sequence indices with a ``shape``
    (a tensor, or a memory-mapped token file). ``work_dir`` receives checkpoints and
    ``train_log.jsonl``; with ``resume`` the latest checkpoint there is restored first.
    ``on_step(record)`` is called after every step (on the main rank) and
    ``on_checkpoint(step)`` after every checkpoint is written (``core.dist.on_main_rank``: rank 0
    alone, the others wait; the objective is back in train mode afterwards; not with FSDP,
    whose forward needs every rank). With ``cfg.strategy == "fsdp"`` the objective is sharded
    here onto ``device`` (default: where its parameters are) unless it is already. ``auto``
    precision is decided once, on rank 0. Returns every step's log record.
    """
    cfg.validate()
    env = distributed_env()
    check_strategy(cfg.strategy, env)
    device = device or next(objective.parameters()).device
    cfg = replace(cfg, precision=agreed_precision(device, cfg.precision))
    work_dir.mkdir(parents=True, exist_ok=True)
    if cfg.activation_checkpointing:
        objective.student.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    model: nn.Module = objective
    if cfg.strategy == "fsdp":
        if on_checkpoint is not None:
            raise MinitronError("checkpoint callbacks are not supported with FSDP")
        shard_objective(objective, device, uses_bf16(device, cfg.precision), env)
    elif cfg.strategy == "ddp":
        model = wrap_ddp(objective, device, env)
    optimizer = torch.optim.AdamW(_param_groups(objective, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.95), eps=1e-8)
    torch.manual_seed(cfg.seed)
    seq_len = sequences.shape[1]
    micro = cfg.batch_size
    tokens_per_step = micro * cfg.grad_accum * env.world * seq_len
    settings = run_settings(cfg, sequences, env.world, device)
    state = (load_training_checkpoint(work_dir, objective, optimizer, env, settings)
             if resume else None)
    state = state or TrainState(step=0, elapsed_s=0.0)
    log_path = work_dir / TRAIN_LOG
    records = _read_log(log_path, state.step) if resume else []
    if env.is_main:
        log_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    barrier(env)

    params = [p for p in objective.parameters() if p.requires_grad]
    bar = tqdm(total=cfg.steps, initial=state.step, desc=desc, unit="step",
               disable=not env.is_main, dynamic_ncols=True)
    objective.train()
    started = time.perf_counter() - state.elapsed_s
    for step in range(state.step, cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        for k in range(cfg.grad_accum):
            first = ((step * cfg.grad_accum + k) * env.world + env.rank) * micro
            ids = sequences[sample_indices(len(sequences), first, micro, cfg.seed)].to(device)
            skip_sync = cfg.strategy == "ddp" and k < cfg.grad_accum - 1
            with (model.no_sync() if skip_sync else nullcontext()), \
                    autocast_for(device, cfg.precision):
                parts = model(ids)
                (parts.total / cfg.grad_accum).backward()
            hidden = parts.hidden if parts.hidden is not None else torch.zeros((), device=device)
            sums += torch.stack([parts.total.detach(), parts.kd, parts.lm, hidden]).double()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        if not torch.isfinite(grad_norm):
            raise MinitronError(f"non-finite loss or gradient at step {step + 1}; lower --lr "
                                "or check the data and weights for NaN")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        means = all_mean(sums / cfg.grad_accum, env)
        dt = time.perf_counter() - t0
        record = {"step": step + 1, "loss": float(means[0]), "kd": float(means[1]),
                  "lm": float(means[2]), "hidden": float(means[3]), "lr": lr,
                  "grad_norm": float(grad_norm), "tokens": (step + 1) * tokens_per_step,
                  "tokens_per_s": tokens_per_step / dt, "elapsed_s": time.perf_counter() - started}
        records.append(record)
        if env.is_main:
            with log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
            if on_step is not None:
                on_step(record)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_training_checkpoint(work_dir, objective, optimizer,
                                     TrainState(step + 1, record["elapsed_s"], env.world,
                                                settings), env)
            if on_checkpoint is not None:
                on_main_rank(functools.partial(_run_callback, on_checkpoint, step + 1))
                objective.train()
    bar.close()
    objective.eval()
    return records


def _run_callback(callback: Callable[[int], object], step: int) -> None:
    """``callback(step)``, its result dropped (``on_main_rank`` shares results between ranks)."""
    callback(step)


def mean_losses(objective: nn.Module, sequences: torch.Tensor, cfg: TrainConfig) -> dict:
    """Mean loss parts of ``objective`` over ``sequences`` without training (validation).
    Every rank of a sharded (FSDP) objective must call it with the same ``sequences``: each
    forward gathers the shards."""
    device = next(objective.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64)
    was_training = objective.training
    objective.eval()
    with torch.no_grad(), autocast_for(device, cfg.precision):
        for batch in sequences.split(cfg.batch_size):
            parts = objective(batch.to(device))
            sums += torch.stack([parts.total.detach(), parts.kd, parts.lm]).double().cpu() * len(batch)
    objective.train(was_training)
    total, kd, lm = (sums / len(sequences)).tolist()
    return {"loss": total, "kd": kd, "lm": lm}
