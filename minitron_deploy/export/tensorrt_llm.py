"""TensorRT-LLM glue: which flow the installed version supports and the exact commands.

TensorRT-LLM <= 1.2.x builds TensorRT engines from a checkpoint (``trtllm-build``) and serves
them; newer versions run the PyTorch backend, which serves a Hugging Face directory directly
(``trtllm-serve HF_DIR``). TensorRT-LLM installs only from NVIDIA's index, so off the release
container this module only composes commands (the container one included); nothing here
imports ``tensorrt_llm``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shlex
from pathlib import Path

RELEASE_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.2.1"
#: The image ``containers/Dockerfile`` builds (``docker build -f containers/Dockerfile -t ...``).
IMAGE = "minitron-deploy:trtllm-1.2.1"
LAST_ENGINE_RELEASE = (1, 2)


def installed_version() -> str | None:
    """The installed ``tensorrt_llm`` version, or None when it is not importable."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        return None
    try:
        return importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _release(version: str) -> tuple[int, int]:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def has_engine_flow(version: str) -> bool:
    """True for releases that still build TensorRT engines (1.2.x and older)."""
    return _release(version) <= LAST_ENGINE_RELEASE


def build_command(checkpoint: Path, out: Path, max_batch_size: int, max_input_len: int,
                  max_seq_len: int) -> list[str]:
    """``trtllm-build`` for a checkpoint (FP8 is read from its config's quantization)."""
    return ["trtllm-build", "--checkpoint_dir", str(checkpoint), "--output_dir", str(out),
            "--max_batch_size", str(max_batch_size), "--max_input_len", str(max_input_len),
            "--max_seq_len", str(max_seq_len), "--gemm_plugin", "auto"]


def serve_command(model: Path, tokenizer: Path | None = None, backend: str = "pytorch",
                  port: int = 8000, host: str = "127.0.0.1") -> list[str]:
    """``trtllm-serve`` exposing an OpenAI-compatible endpoint for an engine or HF directory,
    on loopback unless ``host`` says otherwise."""
    cmd = ["trtllm-serve", str(model), "--backend", backend, "--host", host,
           "--port", str(port)]
    if tokenizer is not None:
        cmd += ["--tokenizer", str(tokenizer)]
    return cmd


def container_command(args: list[str], mounts: list[Path]) -> list[str]:
    """``docker run`` of ``args`` in our image, each mount bound at the same absolute path."""
    volumes = []
    for path in dict.fromkeys(p.resolve() for p in mounts):
        volumes += ["-v", f"{path}:{path}"]
    return ["docker", "run", "--rm", "--gpus", "all", "--ipc=host", "--ulimit", "memlock=-1",
            "--ulimit", "stack=67108864", *volumes, IMAGE, *args]


def render(cmd: list[str]) -> str:
    """A command as one shell-quoted line."""
    return shlex.join(cmd)
