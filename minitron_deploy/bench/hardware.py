"""The machine under test: versions, free memory, and its measured copy bandwidth and matmul peak."""

from __future__ import annotations

import functools
import os
import platform
import statistics
import subprocess
import time

import torch
import transformers

from ..core import precision
from ..core.devices import host_memory
from ..core.errors import MinitronError
from .limits import Limits

#: Ceilings of named GPUs for predictions without one (bf16 matmul, copy bytes read + written).
GPU_LIMITS: dict[str, Limits] = {
    "h100": Limits(bandwidth=2.93e12, peak_flops=773e12),
    "h200": Limits(bandwidth=4.3e12, peak_flops=790e12),
    "a100": Limits(bandwidth=2.039e12, peak_flops=312e12),
}
#: Where each number comes from.
GPU_LIMITS_SOURCE = {
    "h100": "measured by minitron bench on an H100 80GB HBM3 (benchmarks/throughput)",
    "h200": "measured copy bandwidth and bf16 matmul rate of an H200",
    "a100": "datasheet (A100 80GB SXM: 2.039 TB/s HBM2e, 312 TFLOP/s dense bf16), not measured",
}


def gpu_limits(name: str) -> Limits:
    """The recorded ceilings of GPU ``name`` (h100, h200, a100)."""
    if name not in GPU_LIMITS:
        raise MinitronError(f"unknown GPU {name!r}; choose from {', '.join(GPU_LIMITS)}")
    return GPU_LIMITS[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present (``precision.resolve_device``); an unavailable CUDA
    request is refused."""
    device = torch.device(precision.resolve_device(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MinitronError("--device cuda was requested but no CUDA GPU is visible")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> int:
    """Bytes that new allocations can still take on ``device``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_memory()[1]


def machine_info(device: torch.device) -> dict:
    """Versions and the device's name (recorded with every report)."""
    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "host_cpu": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, driver=_driver_version())
    return info


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _median_seconds(fn, device: torch.device, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@functools.lru_cache(maxsize=None)
def measure_limits(device: torch.device, dtype: torch.dtype) -> Limits:
    """Copy bandwidth (bytes read + written per second over a large buffer) and the
    matmul rate of ``dtype`` at a size that fills the device; random data, medians of runs."""
    gpu = device.type == "cuda"
    n_bytes, n = (2 << 30, 8192) if gpu else (128 << 20, 1024)
    src = torch.randn(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device, 10)
    del src, dst
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    mm_s = _median_seconds(lambda: a @ b, device, 10)
    return Limits(bandwidth=2 * n_bytes / copy_s, peak_flops=2 * n**3 / mm_s)
