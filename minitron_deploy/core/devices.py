"""How much memory a device has: the machine's RAM (read portably) or a GPU's."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import MinitronError


def device_memory(device: str) -> int | None:
    """Total memory of ``device`` (GPU memory, or the machine's RAM for the CPU); None if the
    device is not present here."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return host_memory()[0]


def host_memory() -> tuple[int, int]:
    """(total, available) bytes of this machine's RAM: psutil's reading where it is installed,
    else Linux's /proc/meminfo, else sysconf's page counts (available is then the total where
    the system does not count free pages, as on macOS). Refuses, in one line, a system that
    answers none of them."""
    try:
        import psutil
    except ImportError:
        return _meminfo(Path("/proc/meminfo")) or _sysconf_memory()
    memory = psutil.virtual_memory()
    return memory.total, memory.available


def _meminfo(path: Path) -> tuple[int, int] | None:
    """MemTotal and MemAvailable of a /proc/meminfo file, or None where it cannot be read."""
    try:
        info = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
        return tuple(int(info[key].split()[0]) * 1024 for key in ("MemTotal", "MemAvailable"))
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _sysconf_memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        raise MinitronError("cannot read this machine's memory size; pip install psutil")
    try:
        return total, page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        return total, total
