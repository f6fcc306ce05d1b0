"""Training checkpoints: trainable weights, optimizer and RNG state, written atomically so a
killed run always finds the last complete one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import MinitronError

_LATEST = "latest"


@dataclass
class TrainState:
    """Where a run stands after ``step`` completed optimizer steps."""

    step: int
    elapsed_s: float


def trainable_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (tied weights appear once)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def save_training_checkpoint(work_dir: Path, module: nn.Module,
                             optimizer: torch.optim.Optimizer, state: TrainState) -> Path:
    """Write ``step-N/`` beside a temp dir, rename it, point ``latest`` at it, drop older ones."""
    name = f"step-{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=work_dir))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable_tensors(module).items()},
                  str(tmp / "trainable.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state.__dict__))
        final = work_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = work_dir / f".{_LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, work_dir / _LATEST)
    for old in work_dir.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_checkpoint(work_dir: Path, module: nn.Module,
                             optimizer: torch.optim.Optimizer) -> TrainState | None:
    """Restore the latest checkpoint in ``work_dir`` into module and optimizer (None if none)."""
    pointer = work_dir / _LATEST
    if not pointer.is_file():
        return None
    ckpt = work_dir / pointer.read_text().strip()
    try:
        weights = load_file(str(ckpt / "trainable.safetensors"))
        extra = torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu")
        state = TrainState(**json.loads((ckpt / "state.json").read_text()))
    except Exception as exc:  # missing or corrupt files of several kinds
        raise MinitronError(f"cannot resume from {ckpt}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}")
    params = trainable_tensors(module)
    if set(weights) != set(params):
        raise MinitronError(f"checkpoint {ckpt} does not match this model "
                            "(different trainable parameters); start a fresh run")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["rng"]["cpu"])
    if "cuda" in extra["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["rng"]["cuda"])
    return state
