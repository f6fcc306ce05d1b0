"""The vLLM environment seen from this package: its python, and one call of the runner script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..arch import get_adapter
from ..core.errors import MinitronError
from ..core.shape import ModelShape

ENV_VAR = "MINITRON_VLLM_PYTHON"
RUNNER = Path(__file__).with_name("vllm_runner.py")
#: ``--dtype`` names -> vLLM's.
VLLM_DTYPES = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_HAS_VLLM = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"


def _venv_candidates() -> list[Path]:
    """``.venv-vllm/bin/python`` in the current directory, then in the source checkout this
    package runs from (none when it is installed from a wheel)."""
    places = [Path.cwd()]
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        places.append(checkout)
    return [place / ".venv-vllm" / "bin" / "python" for place in dict.fromkeys(places)]


def vllm_python() -> str:
    """``$MINITRON_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` in the current directory or
    the source checkout, else a ``python`` on PATH that has vLLM; refuses naming what it tried
    when there is none."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise MinitronError(f"{ENV_VAR}={explicit} is not an executable python")
        return explicit
    candidates = _venv_candidates()
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    python = shutil.which("python")
    if python and subprocess.run([python, "-c", _HAS_VLLM], capture_output=True).returncode == 0:
        return python
    tried = ", ".join(map(str, candidates))
    raise MinitronError(f"no vLLM environment: tried ${ENV_VAR} (unset), {tried} and "
                        f"python on PATH ({python or 'none'}: no vllm); set {ENV_VAR} to a "
                        "python that has vLLM, or run .ci/setup in the checkout (it builds "
                        ".venv-vllm)")


def vllm_overrides(config) -> dict | None:
    """Config overrides vLLM needs to load this checkpoint as transformers does, or None (the
    family's adapter knows)."""
    return get_adapter(config).vllm_overrides(config)


def quiet_env() -> dict[str, str]:
    """The environment for vLLM subprocesses: warnings and errors only in its log."""
    return {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}


def kv_cache_bytes(config, sequences: int, max_len: int, dtype_bytes: int) -> int:
    """KV cache for ``sequences`` of ``max_len`` tokens (plus one partly filled 128-token
    block each), at least 64 MiB."""
    shape = ModelShape.from_config(config)
    per_token = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * dtype_bytes
    return max(64 << 20, per_token * sequences * (max_len + 128))


def run_vllm(models: list[dict], threads: int | None = None, timeout: float | None = None) -> dict:
    """Run the runner script on ``models`` (its job entries) in the vLLM environment.

    ``threads`` caps its CPU threads, unpinned (tiny models run fastest on one); None keeps
    vLLM's own binding of one thread per core. Returns the runner's result: ``{"vllm":
    version, "device": ..., "models": [...]}``, one entry per model (``{"error": ...}`` for a
    model vLLM could not run).
    """
    python = vllm_python()
    env = quiet_env()
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), VLLM_CPU_OMP_THREADS_BIND="nobind")
    with tempfile.TemporaryDirectory(prefix="minitron-vllm-") as tmp:
        job, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({"models": models}))
        try:
            proc = subprocess.run([python, str(RUNNER), str(job), str(result)], env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MinitronError(f"the vLLM runner did not finish within {timeout:.0f} s")
        if proc.returncode != 0 or not result.is_file():
            tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [""]
            raise MinitronError(f"the vLLM runner failed (exit {proc.returncode}): {tail[0]}")
        return json.loads(result.read_text())
