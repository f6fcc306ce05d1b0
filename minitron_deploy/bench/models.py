"""What ``--models`` names: a checkpoint directory, a named paper shape, or a folder holding only
a ``config.json`` (as ``minitron search --dry-run`` writes per candidate); the last two get
random weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ..core.errors import MinitronError
from ..core.quantized import Quantization, read_quantization
from ..core.shape import ModelShape, reshaped_config

_LLAMA31_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
    max_position_embeddings=131072, tie_word_embeddings=False, bos_token_id=128000,
    eos_token_id=128001,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192})

_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")

#: Llama-3.1-Minitron shapes (arXiv 2408.11796): 4B-Width trims hidden/ffn, 4B-Depth drops 16 layers.
NAMED_SHAPES: dict[str, ModelShape] = {
    "llama31-8b": ModelShape(4096, 14336, 32, 8, 32, 128),
    "minitron-4b-width": ModelShape(3072, 9216, 32, 8, 32, 128),
    "minitron-4b-depth": ModelShape(4096, 14336, 32, 8, 16, 128),
}
#: The Hugging Face Hub repositories whose shape a name stands for.
NAMED_SHAPE_REPOS: dict[str, str] = {"llama31-8b": "meta-llama/Llama-3.1-8B"}


@dataclass(frozen=True)
class ModelSpec:
    """One ``--models`` entry: ``NAME_OR_DIR[@B1,B2,...]`` (the batch sizes override the global list)."""

    name: str
    batch_sizes: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        name, _, batches = text.partition("@")
        if not batches:
            return cls(name)
        return cls(name, parse_batch_sizes(batches))

    @property
    def is_named(self) -> bool:
        return self.name in NAMED_SHAPES

    @property
    def is_config_only(self) -> bool:
        """A folder with a config.json and no weight files."""
        folder = Path(self.name)
        return (not self.is_named and (folder / "config.json").is_file()
                and not any(True for pattern in _WEIGHT_FILES for _ in folder.glob(pattern)))

    @property
    def random_weights(self) -> bool:
        return self.is_named or self.is_config_only

    @property
    def quantization(self) -> Quantization | None:
        """The checkpoint's quantization (None: 16/32-bit weights, or random ones)."""
        return None if self.random_weights else read_quantization(self.name)

    @property
    def label(self) -> str:
        return self.name if self.is_named else Path(self.name).name


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); refuses empty, non-integer and non-positive entries."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise MinitronError(f"batch sizes must be integers separated by commas, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise MinitronError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def named_config(name: str) -> LlamaConfig:
    """The transformers config of named shape ``name``: Llama-3.1-8B's (vocabulary, RoPE,
    norms) reshaped to it."""
    return reshaped_config(LlamaConfig(**_LLAMA31_8B), NAMED_SHAPES[name])


def named_shape_of(repo_spec: str) -> str | None:
    """The named shape a Hub id (``org/name[@rev]``) stands for, or None."""
    repo = repo_spec.partition("@")[0]
    return next((name for name, known in NAMED_SHAPE_REPOS.items() if known == repo), None)


def model_config(spec: ModelSpec):
    """The config of a named shape or a checkpoint directory, without loading weights."""
    if spec.is_named:
        return named_config(spec.name)
    if not Path(spec.name).exists():
        raise MinitronError(f"unknown model {spec.name!r}: neither a directory nor one of the "
                            f"named shapes {', '.join(NAMED_SHAPES)}")
    from ..arch.modeling import load_config

    return load_config(spec.name)


def load_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype):
    """Eval-mode model on ``device``: random weights (std 0.02, unit norms) for named shapes
    and config-only folders."""
    if not spec.random_weights:
        from ..arch.modeling import DTYPES
        from ..arch.modeling import load_model as load_checkpoint

        name = next(k for k, v in DTYPES.items() if v == dtype)
        return load_checkpoint(spec.name, dtype=name, device=str(device))[0]
    config = model_config(spec)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
