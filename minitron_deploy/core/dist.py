"""Ranks under ``torchrun``: the rank view, its collectives, and work that only the main rank
does while the other ranks wait.

The default process group has gloo for CPU tensors and, where CUDA exists, NCCL for CUDA
tensors (``torch.cuda.set_device(local_rank)`` first), so a run on either device works on any
host. ``distributed_env()`` is the rank view of the code that asks: every rank of the run, or,
inside work that rank 0 does alone (``main_rank_view``, entered by ``on_main_rank``), a world
of one. Collectives (``barrier``, ``all_mean``) go over the view's ``group``.

``on_main_rank(fn)`` runs ``fn`` on rank 0 and hands its result (or its failure) to every
rank, so decisions are made once and shared, and a failure on rank 0 ends every rank with the
same one-line :class:`MinitronError` instead of leaving them waiting. In one process it just
calls ``fn``.

While ``fn`` runs, ``distributed_env()`` on rank 0 is a world of one (``main_rank_view``), so
code inside it (a short distillation, token-file building, evaluation) trains on all of its
own tokens and syncs with no one. The default process group is left alone: this package's
collectives take the view's group, and the libraries called inside (ModelOpt's FP8
calibration, see ``export/fp8.py``) are told not to sync. The other ranks wait on a separate
gloo group with a long timeout, as rank 0 may prune, evaluate or export for longer than the
default (NCCL) group's timeout allows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from .errors import MinitronError

T = TypeVar("T")
WAIT_TIMEOUT = timedelta(days=7)
_groups: tuple | None = None  # (the group the others wait on, the group of rank 0 alone)


@dataclass(frozen=True)
class DistEnv:
    """This process's rank in ``group`` of ``world`` processes (``group`` None: one process
    without a process group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_view: DistEnv | None = None  # set while rank 0 works alone


def backend() -> str:
    """The default group's backends: gloo for CPU tensors, NCCL for CUDA tensors where CUDA
    exists, whichever device the run itself uses."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def distributed_env() -> DistEnv:
    """The rank view: inside ``main_rank_view`` rank 0 of one; else rank and world size of
    ``torchrun``'s process group (started here if need be, also for one rank); else one
    process."""
    if _view is not None:
        return _view
    if "WORLD_SIZE" not in os.environ:
        return DistEnv()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend())
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dist.group.WORLD)


@contextlib.contextmanager
def main_rank_view(group) -> Iterator[None]:
    """Inside the block ``distributed_env()`` is rank 0 of a world of one with ``group`` (a
    group of this process alone): for work that rank 0 does while the other ranks wait."""
    global _view
    outer = _view
    _view = DistEnv(0, 1, int(os.environ.get("LOCAL_RANK", "0")), group)
    try:
        yield
    finally:
        _view = outer


def barrier(env: DistEnv) -> None:
    """Wait for every rank of ``env`` (no-op in a world of one)."""
    if env.world > 1:
        import torch.distributed as dist

        dist.barrier(group=env.group)


def all_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``values`` over the ranks of ``env``, on the CPU."""
    if env.world > 1:
        import torch.distributed as dist

        values = values.clone()
        dist.all_reduce(values, group=env.group)
        values /= env.world
    return values.cpu()


def _make_groups() -> tuple:
    """Both groups, made once, collectively (every rank calls this at the same point)."""
    global _groups
    if _groups is None:
        import torch.distributed as dist

        _groups = (dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT), dist.new_group([0]))
    return _groups


def release() -> None:
    """End a ``torchrun`` command that succeeded on every rank: wait for all ranks, then
    destroy the process groups, so gloo's worker threads are not torn down during interpreter
    exit (an abort: "terminate called without an active exception"). Not after a failure,
    where other ranks may still sit in a collective; a no-op in one process."""
    global _groups
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=_groups[0] if _groups else None)
        dist.destroy_process_group()
    _groups = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, MinitronError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def on_main_rank(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its (picklable) result on every rank.

    Every rank must call this at the same point (a call from inside ``fn`` just runs). Inside
    ``fn`` rank 0's ``distributed_env()`` is a world of one. The others return only after
    ``fn`` has finished, so whatever it wrote is there to read. If ``fn`` raises, rank 0
    re-raises its exception and every other rank raises a :class:`MinitronError` carrying
    its message.
    """
    env = distributed_env()
    if env.world == 1:
        return fn()
    import torch.distributed as dist

    wait, solo = _make_groups()
    box: list = [None]
    failure: BaseException | None = None
    if env.is_main:
        try:
            with main_rank_view(solo):
                box[0] = (True, fn())
        except BaseException as exc:  # shared before re-raising, so no rank is left waiting
            failure = exc
            box[0] = (False, _one_line(exc))
    dist.broadcast_object_list(box, src=0, group=wait)
    ok, value = box[0]
    if failure is not None:
        raise failure
    if not ok:
        raise MinitronError(f"rank 0 failed: {value}")
    return value
