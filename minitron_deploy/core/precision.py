"""Which device and precision to compute in: device ``auto`` is CUDA when a GPU is visible,
else the CPU; precision ``auto`` is bf16 where it is faster on this device.

On CUDA that is wherever the GPU supports bf16. On a CPU it depends on the chip: with AMX
bf16 matmuls run about twice as fast as fp32, with AVX2 alone fifty or more times slower. A
short probe times 1024x1024 matmuls in both (stopping early when a small bf16 matmul is already
much slower) and the answer is cached per machine in ``~/.cache/minitron/precision.json``,
keyed by the CPU capability, CPU model and torch version. ``MINITRON_CPU_PRECISION=fp32|bf16`` skips
the probe. Under ``torchrun`` training asks ``agreed_precision``: rank 0 decides and every rank
takes its answer, so ranks never compute in different precisions.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import MinitronError
from .files import read_json_dict

ENV_OVERRIDE = "MINITRON_CPU_PRECISION"
#: bf16 must beat fp32 by this factor to be chosen (autocast adds casts around the matmuls).
MIN_SPEEDUP = 1.2
#: A small bf16 matmul this many times slower than fp32 ends the probe early...
EARLY_STOP = 3.0
#: ...and so does a first full-size one this many times slower (it may include kernel set-up).
FIRST_CALL_STOP = 10.0


#: What a device setting may name.
DEVICES = "auto, cpu, cuda or cuda:N"


def device_problem(name: object) -> str | None:
    """Why ``name`` is no device setting (auto, cpu, cuda, cuda:N), or None."""
    ok = isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name)
    return None if ok else f"is not {DEVICES}"


def check_device(name: str) -> str:
    """``name`` if it is a device setting; else the one-line ``device: ...`` refusal."""
    problem = device_problem(name)
    if problem:
        raise MinitronError(f"device: {name!r} {problem}")
    return name


def resolve_device(name: str) -> str:
    """The device ``name`` stands for: ``auto`` is "cuda" when a GPU is visible, else "cpu";
    any other device setting is itself. Refuses names that are no device setting."""
    if check_device(name) != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(device: str | torch.device, requested: str) -> str:
    """``requested`` itself unless it is ``auto``; then "bf16" where bf16 is faster on
    ``device`` (supported on CUDA; measured on a CPU), else "fp32"."""
    if requested != "auto":
        return requested
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu":
        return _cpu_precision()
    return "fp32"


def agreed_precision(device: str | torch.device, requested: str) -> str:
    """``resolve_precision`` decided by rank 0 alone and shared with every rank; collective
    under ``torchrun`` (every rank calls it at the same point) unless ``requested`` is
    explicit."""
    if requested != "auto":
        return requested
    from .dist import on_main_rank

    return on_main_rank(lambda: resolve_precision(device, requested))


@functools.cache
def _cpu_precision() -> str:
    """The CPU's choice, once per process: the override, else the cached or fresh probe."""
    forced = os.environ.get(ENV_OVERRIDE)
    if forced:
        if forced not in ("bf16", "fp32"):
            raise MinitronError(f"{ENV_OVERRIDE} must be bf16 or fp32, got {forced!r}")
        return forced
    return cpu_precision(cache_path(), machine_key(), probe_matmuls)


def cpu_precision(cache: Path, key: str, probe: Callable[[], dict]) -> str:
    """The cached choice for ``key`` in ``cache``, else ``probe()``'s (``{"fp32_s", "bf16_s"}``
    seconds, ``bf16_s`` None when stopped early), stored there. A corrupt cache is ignored."""
    entries = read_json_dict(cache)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("precision") in ("bf16", "fp32"):
        return entry["precision"]
    timings = probe()
    faster = timings["bf16_s"] is not None and timings["bf16_s"] * MIN_SPEEDUP <= timings["fp32_s"]
    entries[key] = {**timings, "precision": "bf16" if faster else "fp32"}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=2) + "\n")
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs a probe per process
    return entries[key]["precision"]


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/minitron/precision.json`` (``~/.cache`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "minitron" / "precision.json"


def machine_key() -> str:
    """What the probe's answer depends on: CPU capability, CPU model, torch version."""
    return f"{torch.backends.cpu.get_cpu_capability()}|{_cpu_model()}|torch {torch.__version__}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_matmuls(size: int = 1024, reps: int = 3) -> dict:
    """Best-of-``reps`` CPU seconds of one ``size``-square matmul in fp32 and bf16 on one
    thread (so busy neighbours on a shared CPU do not skew the ratio). bf16 is abandoned (None)
    when a 256-square one is ``EARLY_STOP`` or the first full-size one ``FIRST_CALL_STOP``
    times slower than fp32: a CPU without fast bf16 spends a fraction of a second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small = _best(256, torch.float32, 5)
        if _best(256, torch.bfloat16, 2) > EARLY_STOP * small:
            return {"size": 256, "fp32_s": small, "bf16_s": None}
        fp32 = _best(size, torch.float32, reps)
        first = _best(size, torch.bfloat16, 1)
        if first > FIRST_CALL_STOP * fp32:
            return {"size": size, "fp32_s": fp32, "bf16_s": None}
        return {"size": size, "fp32_s": fp32,
                "bf16_s": min(first, _best(size, torch.bfloat16, reps))}
    finally:
        torch.set_num_threads(threads)


def _best(size: int, dtype: torch.dtype, reps: int) -> float:
    a = torch.randn(size, size).to(dtype)
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        a @ a
        best = min(best, time.thread_time() - t0)
    return best
