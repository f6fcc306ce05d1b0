"""TensorRT engines (TensorRT-LLM <= 1.2.x) or, for newer releases, the PyTorch-backend route.

``build_engine`` runs ``trtllm-build`` on an exported checkpoint into a temp dir renamed on
success (with a manifest), and returns the ``trtllm-serve`` command for the result. With
TensorRT-LLM > 1.2 it builds nothing: the PyTorch backend serves the Hugging Face directory.
Without TensorRT-LLM it refuses with the container command that does the same.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..core.artifacts import ARTIFACTS_DIR, artifact_path
from ..core.errors import MinitronError
from . import tensorrt_llm as trt
from .output import MANIFEST, atomic_dir, write_manifest


@dataclass
class EngineResult:
    built: bool
    out_dir: Path | None
    serve_command: str
    message: str


@dataclass
class EngineLimits:
    max_batch_size: int = 64
    max_input_len: int = 1024
    max_seq_len: int = 2048

    def check(self) -> None:
        if min(self.max_batch_size, self.max_input_len, self.max_seq_len) < 1:
            raise MinitronError("engine limits must be positive")
        if self.max_seq_len < self.max_input_len:
            raise MinitronError("--max-seq-len must be at least --max-input-len")


def _read_config(checkpoint: Path) -> dict:
    path = checkpoint / "config.json"
    if not path.is_file():
        raise MinitronError(f"{checkpoint} is not a checkpoint directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MinitronError(f"cannot read {path}: {exc}")


def _hf_source(checkpoint: Path, config: dict) -> Path:
    """The Hugging Face directory behind ``checkpoint`` (itself, or its export's source)."""
    if "model_type" in config:
        return checkpoint
    manifest = artifact_path(checkpoint, MANIFEST)
    if manifest.is_file():
        return Path(json.loads(manifest.read_text())["source"])
    raise MinitronError(f"{checkpoint} is a TensorRT-LLM checkpoint without {ARTIFACTS_DIR}/"
                        f"{MANIFEST}; pass the Hugging Face directory for the PyTorch backend")


def build_engine(checkpoint: str | Path, out_dir: str | Path, limits: EngineLimits | None = None,
                 version: str | None = None, host: str = "127.0.0.1") -> EngineResult:
    """Build (or explain how to serve) ``checkpoint``; ``version`` overrides the detected one,
    ``host`` is the address the printed ``trtllm-serve`` command listens on."""
    checkpoint = Path(checkpoint).resolve()
    out = Path(out_dir).resolve()
    limits = limits or EngineLimits()
    limits.check()
    config = _read_config(checkpoint)
    version = version or trt.installed_version()
    if version is None:
        args = ["minitron", "build-engine", "--checkpoint", str(checkpoint), "--out", str(out),
                "--max-batch-size", str(limits.max_batch_size),
                "--max-input-len", str(limits.max_input_len),
                "--max-seq-len", str(limits.max_seq_len)]
        raise MinitronError("tensorrt_llm is not installed here; run in the TensorRT-LLM "
                            "container: " + trt.render(trt.container_command(
                                args, [checkpoint, out.parent])))
    if not trt.has_engine_flow(version):
        hf_dir = _hf_source(checkpoint, config)
        serve = trt.render(trt.serve_command(hf_dir, host=host))
        return EngineResult(False, None, serve,
                            f"TensorRT-LLM {version} serves Hugging Face checkpoints with its "
                            f"PyTorch backend; no engine is built. Serve {hf_dir} with: {serve}")
    if "architecture" not in config or "mapping" not in config:
        raise MinitronError(f"{checkpoint} is not a TensorRT-LLM checkpoint; create one with "
                            "`minitron export --format trtllm`")
    with atomic_dir(out, checkpoint) as tmp:
        cmd = trt.build_command(checkpoint, tmp, limits.max_batch_size, limits.max_input_len,
                                limits.max_seq_len)
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            raise MinitronError(f"trtllm-build failed with exit code {done.returncode}")
        write_manifest(tmp, checkpoint, "trtllm-engine", config.get("dtype", "?"),
                       {k: config.get(k) for k in ("hidden_size", "intermediate_size",
                                                    "num_hidden_layers", "num_attention_heads",
                                                    "num_key_value_heads", "head_size")},
                       {"tensorrt_llm": version, "limits": limits.__dict__,
                        "quant_algo": (config.get("quantization") or {}).get("quant_algo")})
    tokenizer = checkpoint if (checkpoint / "tokenizer_config.json").is_file() else None
    serve = trt.render(trt.serve_command(out, tokenizer=tokenizer, backend="tensorrt",
                                         host=host))
    return EngineResult(True, out, serve, f"engine written to {out}; serve it with: {serve}")
