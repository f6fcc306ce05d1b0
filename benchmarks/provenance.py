"""What a benchmark result records besides its numbers: the commit, the date and the machine.

Scripts in ``benchmarks/<topic>/`` import it with the ``benchmarks`` folder on ``sys.path``.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import torch

from minitron_deploy.bench.hardware import machine_info


def commit() -> str | None:
    """The short hash of the checkout the benchmark runs from (None outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance(device: str = "cpu") -> dict:
    """Commit, UTC date, and the machine: versions, CPU (its vector capability and the load
    average, as other jobs slow a shared machine), threads and the device."""
    machine = machine_info(torch.device(device))
    machine.update(cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   torch_threads=torch.get_num_threads(), load_avg_1m=os.getloadavg()[0])
    return {"commit": commit(), "machine": machine,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
