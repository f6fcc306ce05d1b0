"""Sharded, resumable training checkpoints with ``torch.distributed.checkpoint`` (DCP).

A checkpoint ``step-N/`` holds the trainable weights and the optimizer state keyed by
parameter name (every rank writes its own shards; one process writes whole tensors), each
rank's RNG state, and ``state.json`` (step, elapsed time, world size, tokens per step). The
data position and the learning-rate schedule are functions of the step. It is written into
``.step-N.tmp`` and renamed, then ``latest`` is pointed at it, so a killed run always finds the
last complete one. DCP reshards on load: a run saved on N ranks resumes on M ranks (FSDP or
not); on the same ranks it continues bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import MinitronError
from .parallel import DistEnv, barrier

_LATEST = "latest"


@dataclass
class TrainState:
    """Where a run stands after ``step`` completed optimizer steps."""

    step: int
    elapsed_s: float
    world: int = 1
    tokens_per_step: int = 0


def _trainable_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def _state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Trainable weights and optimizer state by parameter name (DTensors when sharded)."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict)

    names = _trainable_names(module)
    model = {k: v for k, v in get_model_state_dict(module).items() if k in names}
    return {"model": model, "optim": get_optimizer_state_dict(module, optimizer)}


def _no_dist() -> bool:
    """One process without a process group writes and reads whole tensors."""
    return not torch.distributed.is_initialized()


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
                             tokens_per_step: int) -> TrainState | None:
    """Restore the latest checkpoint in ``work_dir`` into module and optimizer (None if none);
    collective. Refuses a checkpoint of other parameters or another global batch."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, \
        set_optimizer_state_dict

    pointer = work_dir / _LATEST
    if not pointer.is_file():
        return None
    ckpt = work_dir / pointer.read_text().strip()
    try:
        state = TrainState(**json.loads((ckpt / "state.json").read_text()))
        saved = set(dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)
    except Exception as exc:  # missing or corrupt files of several kinds
        raise MinitronError(f"cannot resume from {ckpt}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}")
    if {f"model.{n}" for n in _trainable_names(module)} != {k for k in saved
                                                              if k.startswith("model.")}:
        raise MinitronError(f"checkpoint {ckpt} does not match this model "
                            "(different trainable parameters); start a fresh run")
    if state.tokens_per_step and state.tokens_per_step != tokens_per_step:
        raise MinitronError(f"checkpoint {ckpt} was trained with {state.tokens_per_step} tokens "
                            f"per step, this run takes {tokens_per_step}: keep batch size x "
                            "grad accumulation x ranks x sequence length equal to resume")
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
