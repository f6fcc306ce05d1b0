"""Loading checkpoints safely and writing pruned ones atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..core.artifacts import ARTIFACTS_DIR
from ..core.errors import MinitronError
from ..core.hub import hub_cache, resolve_model
from . import get_adapter
from .quantized import gguf_file, is_modelopt, load_gguf, load_modelopt

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Non-weight files copied from the source checkpoint (tokenizer, generation config, templates).
_COPIED = ("tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "*.model",
           "generation_config.json", "chat_template*", "added_tokens.json")


def load_config(model_dir: str | Path):
    """The config of a local checkpoint or Hub id (``org/name[@rev]``, see ``resolve_model``);
    refuses missing dirs and unsupported families."""
    path = resolve_model(model_dir)
    if not path.is_dir():
        raise MinitronError(f"model directory {path} does not exist")
    gguf = gguf_file(path)
    if gguf is None and not (path / "config.json").is_file():
        raise MinitronError(f"{path} is not a Hugging Face checkpoint (no config.json) nor a "
                            "GGUF folder (no .gguf file)")
    if gguf is None:
        _refuse_remote_code(path)
    source = path / (gguf or "config.json")
    try:
        config = AutoConfig.from_pretrained(str(path), gguf_file=gguf, trust_remote_code=False)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise MinitronError(f"cannot read {source}: {(str(exc).splitlines() or [''])[0]}")
    get_adapter(config)
    return config


def _refuse_remote_code(path: Path) -> None:
    """Refuse checkpoints whose config needs custom code (``auto_map``) for an architecture
    transformers does not ship: such code is never imported (``trust_remote_code`` stays off)."""
    from transformers import CONFIG_MAPPING

    try:
        raw = json.loads((path / "config.json").read_text())
    except (ValueError, OSError):
        return  # AutoConfig reports unreadable configs below
    if isinstance(raw, dict) and raw.get("auto_map") and raw.get("model_type") not in CONFIG_MAPPING:
        raise MinitronError(f"{path} needs custom code ({raw.get('model_type')!r} via auto_map), "
                            "which minitron never runs (trust_remote_code is off); use a "
                            "checkpoint of a supported family")


def load_model(model_dir: str | Path, dtype: str = "fp32", device: str = "cpu"):
    """Model (eval mode) and tokenizer (or None) from a local dir or Hub id, without remote
    code. Besides Hugging Face checkpoints (compressed-tensors ones too), GGUF folders and
    ModelOpt FP8 checkpoints load, dequantized (``quantized.py``), saying so in one line."""
    model_dir = resolve_model(model_dir)
    config = load_config(model_dir)
    if dtype not in DTYPES:
        raise MinitronError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    gguf, tokenizer = gguf_file(model_dir), None
    try:
        if gguf is not None:
            model, tokenizer = load_gguf(model_dir, gguf, DTYPES[dtype])
        elif is_modelopt(model_dir):
            model = load_modelopt(model_dir, DTYPES[dtype])
        else:
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=DTYPES[dtype], trust_remote_code=False,
                **get_adapter(config).load_options(config))
    except MinitronError:
        raise
    except Exception as exc:  # safetensors/torch raise many types for corrupt or missing weights
        first = (str(exc).strip().splitlines() or [""])[0]
        raise MinitronError(f"cannot load weights from {model_dir}: {type(exc).__name__}: {first}")
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except (OSError, ValueError, TypeError):
            tokenizer = None
    return model.to(device).eval(), tokenizer


def check_output_dir(out_dir: str | Path, model_dir: str | Path | None = None) -> Path:
    """Refuse writing over the input model or over an existing non-empty directory."""
    out = Path(out_dir).resolve()
    if model_dir is not None and out == resolve_model(model_dir).resolve():
        raise MinitronError("the output directory is the input model; refusing to overwrite it")
    check_not_inside(out, model_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MinitronError(f"output {out} already exists and is not empty")
    check_writable_parent(out)
    return out


def check_not_inside(out: str | Path, *model_dirs: str | Path | None) -> None:
    """Refuse an output path inside an input model directory (it would modify the input) or
    inside the Hugging Face cache."""
    out = Path(out).resolve()
    for model_dir in model_dirs:
        if model_dir is not None and resolve_model(model_dir).resolve() in out.parents:
            raise MinitronError(f"output {out} is inside the input model {model_dir}; refusing "
                                "to modify the input")
    cache = hub_cache()
    if out == cache or cache in out.parents:
        raise MinitronError(f"output {out} is inside the Hugging Face cache {cache}; refusing "
                            "to write there")


def check_writable_parent(out: str | Path) -> None:
    """Refuse an output whose parent cannot be created or written (e.g. a regular file)."""
    parent = Path(out).resolve().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MinitronError(f"cannot write to {parent}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise MinitronError(f"cannot write to {parent}")


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, source_dir: str | Path | None = None) -> Iterator[Path]:
    """Yield a temp dir beside ``out_dir``; rename it to ``out_dir`` only if the block succeeds.

    Refuses an existing non-empty output, the input model itself and unwritable parents before
    anything is created.
    """
    out = check_output_dir(out_dir, source_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise MinitronError(f"cannot write to {out.parent}: {exc.strerror}")
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # check_output_dir guaranteed it is empty
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint_atomic(model, out_dir: str | Path, source_dir: str | Path | None = None,
                           extra_json: dict[str, dict] | None = None,
                           write_extra: Callable[[Path], object] | None = None,
                           write_artifacts: Callable[[Path], object] | None = None) -> Path:
    """``save_pretrained`` into a temp dir beside ``out_dir``, copy tokenizer files, run
    ``write_extra(tmp_dir)`` for further loader files (a tokenizer), write ``extra_json`` and run
    ``write_artifacts(artifacts_dir)`` in the ``minitron/`` subfolder, then rename: all or
    nothing."""
    with atomic_dir(out_dir, source_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if source_dir is not None:
            for pattern in _COPIED:
                for f in resolve_model(source_dir).glob(pattern):
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
        if write_extra is not None:
            write_extra(tmp)
        if extra_json or write_artifacts is not None:
            artifacts = tmp / ARTIFACTS_DIR
            artifacts.mkdir()
            for name, data in (extra_json or {}).items():
                (artifacts / name).write_text(json.dumps(data, indent=2) + "\n")
            if write_artifacts is not None:
                write_artifacts(artifacts)
    return Path(out_dir).resolve()
