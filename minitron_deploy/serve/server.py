"""``minitron serve``: vLLM's OpenAI-compatible server for a checkpoint (the vLLM environment's)."""

from __future__ import annotations

import json
import os
import shlex
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from ..arch.modeling import load_config
from ..core.errors import MinitronError
from ..core.hub import resolve_model
from ..core.precision import resolve_device, resolve_precision
from ..core.quantized import Quantization, read_quantization
from .quant_support import detect_hardware, vllm_kernel
from .vllm_env import VLLM_DTYPES, vllm_overrides, vllm_python

_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class ServeSettings:
    """What to serve (a checkpoint folder or Hub id) and where; ``cpu_kv_cache_gib`` sizes the
    KV cache of vLLM's CPU build; ``dtype`` ``auto`` is resolved here (:func:`resolve_dtype`),
    not left to vLLM, whose own choice is bf16 on every CPU."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    max_model_len: int | None = None
    cpu_kv_cache_gib: int = 4

    @property
    def path(self) -> Path:
        """The checkpoint folder (a Hub id's from the Hugging Face cache)."""
        return resolve_model(self.model)

    @property
    def name(self) -> str:
        """The model name clients send: the folder's name, or a Hub id's repository name."""
        if Path(self.model).exists():
            return Path(self.model).resolve().name
        return self.model.partition("@")[0].rpartition("/")[2]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


def check_settings(settings: ServeSettings):
    """Refuse, in one line, a folder that is not a model, a quantized one vLLM has no kernel
    for on this hardware, bad limits or a port in use; returns the model's config."""
    vllm_kernel(read_quantization(settings.path), detect_hardware())
    config = load_config(settings.path)
    if not any(settings.path.glob("*.safetensors")):
        raise MinitronError(f"{settings.model} has no *.safetensors weights")
    if settings.dtype not in VLLM_DTYPES:
        raise MinitronError(f"unknown dtype {settings.dtype!r}; choose from "
                            f"{', '.join(VLLM_DTYPES)}")
    if settings.max_model_len is not None and settings.max_model_len < 1:
        raise MinitronError("--max-model-len must be a positive number of tokens")
    if settings.cpu_kv_cache_gib < 1:
        raise MinitronError("--cpu-kv-cache-gib must be at least 1")
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise MinitronError(f"cannot listen on {settings.host}:{settings.port} "
                                f"({exc.strerror}); pick another --port or --host")
    return config


def resolve_dtype(settings: ServeSettings) -> ServeSettings:
    """``settings`` with dtype ``auto`` made explicit for the device vLLM will use (a visible
    GPU, else the CPU): bf16 where it is faster there (on a CPU as the precision probe
    measures), else fp32."""
    return replace(settings, dtype=resolve_precision(resolve_device("auto"), settings.dtype))


def has_chat_template(model_dir: str | Path) -> bool:
    """Whether the checkpoint carries a chat template (a file, or in tokenizer_config.json)."""
    path = Path(model_dir)
    config = path / "tokenizer_config.json"
    return any((path / f).is_file() for f in _CHAT_TEMPLATE_FILES) or (
        config.is_file() and '"chat_template"' in config.read_text())


def server_command(settings: ServeSettings, python: str, overrides: dict | None = None,
                   quant: Quantization | None = None) -> list[str]:
    """The vLLM server's command line (the model's own chat template, no remote code;
    ``--quantization`` from the folder's ``quant``)."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(settings.path),
           "--served-model-name", settings.name, "--host", settings.host,
           "--port", str(settings.port), "--dtype", VLLM_DTYPES[settings.dtype]]
    if settings.max_model_len is not None:
        cmd += ["--max-model-len", str(settings.max_model_len)]
    if overrides:
        cmd += ["--hf-overrides", json.dumps(overrides)]
    if quant is not None and quant.vllm_method:
        cmd += ["--quantization", quant.vllm_method]
    return cmd


def usage_lines(settings: ServeSettings) -> list[str]:
    """The URL, a curl example and what the server can answer."""
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "Hello"}], '
            '"max_tokens": 32}' % settings.name)
    quant = read_quantization(settings.path)
    kernel = vllm_kernel(quant, detect_hardware())
    weights = f"{quant.label} weights ({kernel.kernel}), " if quant and kernel else ""
    lines = [f"serving {settings.model} as {settings.name!r}, {weights}in {settings.dtype} at "
             f"{settings.url} (Ctrl-C stops)",
             f"  curl {settings.url}/chat/completions -H 'Content-Type: application/json' "
             f"-d {shlex.quote(body)}"]
    if not has_chat_template(settings.path):
        lines.append("  this checkpoint has no chat template: /v1/chat/completions will refuse "
                     "requests, /v1/completions works")
    return lines


def serve(settings: ServeSettings) -> None:
    """Check, resolve the dtype, print how to reach the server, then become vLLM's server
    process (exec)."""
    overrides = vllm_overrides(check_settings(settings))
    settings = resolve_dtype(settings)
    python = vllm_python()
    for line in usage_lines(settings):
        print(line, flush=True)
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kv_cache_gib))
    cmd = server_command(settings, python, overrides, read_quantization(settings.path))
    os.execve(python, cmd, env)
