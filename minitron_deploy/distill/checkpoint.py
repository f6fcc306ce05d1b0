"""Sharded, resumable training checkpoints with ``torch.distributed.checkpoint`` (DCP).

A checkpoint ``step-N/`` holds the trainable weights and the optimizer state keyed by
parameter name (every rank writes its own shards; one process writes whole tensors), each
rank's RNG state, and ``state.json`` (step, elapsed time, world size, and the settings that
shape the run: :func:`run_settings`). The data position and the learning-rate schedule are
functions of the step and those settings, so a resume under other settings is refused. It is
written into ``.step-N.tmp`` and renamed, then ``latest`` is pointed at it, so a killed run
always finds the last complete one. DCP reshards on load: a run saved on N ranks resumes on M
ranks (FSDP or not; same tokens per step); on the same ranks it continues bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.dist import DistEnv, barrier, distributed_env
from ..core.errors import MinitronError
from ..core.precision import resolve_precision
from ..data.tokens import TokenSequences
from .schedule import TrainConfig

_LATEST = "latest"
#: Settings that may differ on resume while the tokens per step stay equal (another number of
#: ranks: DCP reshards on load).
_BATCH_LAYOUT = ("batch_size", "grad_accum", "world")


@dataclass
class TrainState:
    """Where a run stands after ``step`` completed optimizer steps."""

    step: int
    elapsed_s: float
    world: int = 1
    settings: dict | None = None  # run_settings() of the run that wrote it


def data_sha256(sequences) -> str:
    """sha256 of the training token ids: a token file's, recorded when it was written
    (``tokens.py``), else of the tensor's bytes."""
    if isinstance(sequences, TokenSequences):
        return sequences.sha256
    ids = torch.as_tensor(sequences).detach().cpu().contiguous()
    return hashlib.sha256(ids.numpy()).hexdigest()


def run_settings(cfg: TrainConfig, sequences, world: int, device: torch.device) -> dict:
    """What shapes a run of ``cfg`` on ``sequences`` over ``world`` ranks: the learning-rate
    schedule (warmup resolved as ``lr_at`` does), the optimizer, seed, precision (resolved on
    ``device``), sequence length and global batch, the data's sha256 and the quantization
    scheme trained through (QAD)."""
    seq_len = sequences.shape[1]
    return {"steps": cfg.steps, "lr": cfg.lr, "min_lr_ratio": cfg.min_lr_ratio,
            "warmup_steps": cfg.resolved_warmup_steps, "weight_decay": cfg.weight_decay,
            "max_grad_norm": cfg.max_grad_norm, "seed": cfg.seed,
            "precision": resolve_precision(device, cfg.precision), "seq_len": seq_len,
            "tokens_per_step": cfg.batch_size * cfg.grad_accum * world * seq_len,
            "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "world": world,
            "data_sha256": data_sha256(sequences), "quantize": cfg.quantize}


def _describe(key: str, settings: dict) -> str:
    value = settings[key]
    if key == "data_sha256":
        return value[:12]
    if key == "tokens_per_step":
        return f"{value} ({' x '.join(str(settings[k]) for k in (*_BATCH_LAYOUT, 'seq_len'))})"
    return str(value)


def _check_settings(saved: dict | None, settings: dict, work_dir: Path) -> None:
    """Refuse, in one line naming each difference, to resume a run recorded with ``saved``
    settings under other ``settings`` (or one that recorded none)."""
    fix = f"start over by deleting {work_dir}, or resume with the same settings"
    if saved is None:
        raise MinitronError(f"cannot resume: the checkpoint in {work_dir} records no training "
                            "settings to check (written by an older version); start over by "
                            f"deleting {work_dir}")
    labels = {"tokens_per_step": "tokens per step (batch size x grad-accum x ranks x seq-len)",
              "data_sha256": "training data (sha256)"}
    changed = [f"{labels.get(key, key.replace('_', '-'))} was {_describe(key, saved)}, "
               f"now {_describe(key, settings)}"
               for key in settings if key not in _BATCH_LAYOUT
               and saved.get(key) != settings[key]]
    if changed:
        raise MinitronError(f"cannot resume: {'; '.join(changed)} ({fix})")


def _trainable_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def _state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Trainable weights and optimizer state by parameter name (DTensors when sharded)."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    names = _trainable_names(module)
    model = {k: v for k, v in get_model_state_dict(module).items() if k in names}
    return {"model": model, "optim": get_optimizer_state_dict(module, optimizer)}


def _no_dist() -> bool:
    """One process writes and reads whole tensors, also rank 0 working alone under ``torchrun``
    (``distributed_env()`` is then a world of one; the default group would wait for the
    others)."""
    return distributed_env().world == 1


def _rng_state() -> dict:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def save_training_checkpoint(work_dir: Path, module: nn.Module,
                             optimizer: torch.optim.Optimizer, state: TrainState,
                             env: DistEnv) -> Path:
    """Write ``step-N/`` (collective: every rank calls it) and point ``latest`` at it."""
    import torch.distributed.checkpoint as dcp

    name = f"step-{state.step:08d}"
    tmp, final = work_dir / f".{name}.tmp", work_dir / name
    if env.is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier(env)
    dcp.save(_state(module, optimizer), checkpoint_id=str(tmp), no_dist=_no_dist())
    torch.save(_rng_state(), tmp / f"rng-rank{env.rank}.pt")
    barrier(env)
    if env.is_main:
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = work_dir / f".{_LATEST}.tmp"
        pointer.write_text(name)
        os.replace(pointer, work_dir / _LATEST)
        for old in work_dir.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def load_training_checkpoint(work_dir: Path, module: nn.Module,
                             optimizer: torch.optim.Optimizer, env: DistEnv,
                             settings: dict) -> TrainState | None:
    """Restore the latest checkpoint in ``work_dir`` into module and optimizer (None if none);
    collective. Refuses a checkpoint of other parameters, or written under other
    :func:`run_settings` than ``settings``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    pointer = work_dir / _LATEST
    if not pointer.is_file():
        return None
    ckpt = work_dir / pointer.read_text().strip()
    try:
        record = json.loads((ckpt / "state.json").read_text())
        saved = set(dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)
    except Exception as exc:  # missing or corrupt files of several kinds
        raise MinitronError(f"cannot resume from {ckpt}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}")
    _check_settings(record.get("settings"), settings, work_dir)
    state = TrainState(**record)
    if {f"model.{n}" for n in _trainable_names(module)} != {k for k in saved
                                                              if k.startswith("model.")}:
        raise MinitronError(f"checkpoint {ckpt} does not match this model "
                            "(different trainable parameters); start a fresh run")
    target = _state(module, optimizer)
    try:
        dcp.load(target, checkpoint_id=str(ckpt), no_dist=_no_dist())
    except Exception as exc:
        raise MinitronError(f"cannot resume from {ckpt}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}")
    set_model_state_dict(module, target["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(module, optimizer, target["optim"])
    rng_file = ckpt / f"rng-rank{env.rank}.pt"
    if state.world == env.world and rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return state
