"""Work that only the main rank does under ``torchrun`` while the other ranks wait.

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

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from .distill.parallel import distributed_env, main_rank_view
from .errors import MinitronError

T = TypeVar("T")
WAIT_TIMEOUT = timedelta(days=7)
_groups: tuple | None = None  # (the group the others wait on, the group of rank 0 alone)


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
