"""The quantization schemes ``minitron quantize`` writes, and the checkpoint formats each can be
written in.

A format names the backend that writes it: ``compressed-tensors`` (the format vLLM and SGLang
load, written by :mod:`.compressed`), ``modelopt`` (ModelOpt's unified Hugging Face checkpoint,
read by TensorRT-LLM, vLLM and SGLang, written by :mod:`.modelopt_hf`) and ``gguf`` (llama.cpp,
written by :mod:`.gguf`). A scheme's first format is its default.

Each format of a scheme has its :class:`~minitron_deploy.core.weight_bytes.Storage`: how many
bytes each weight takes, scales included, and which tensors stay 16-bit, so that
:func:`weight_bytes` predicts a quantized checkpoint's weight bytes from a config alone:

- compressed-tensors quantizes every linear but ``lm_head``; embeddings, norms and biases stay
  16-bit; scales are 16-bit and symmetric (no zero points): ``int8-w8a8`` and ``fp8`` 8 bits
  plus one scale per output row, ``fp8-block`` 8 bits plus one per 128x128 block, ``w4a16`` 4
  bits (eight to an int32) plus one per group of 128 and an int64[2] shape record;
- ModelOpt keeps ``lm_head`` and the embeddings 16-bit: ``fp8`` 8 bits plus an fp32 weight and
  input scale per tensor, ``nvfp4`` 4 bits plus an FP8 scale per 16 values and an fp32 second
  weight scale and input scale per tensor;
- GGUF quantizes every matrix, the token embedding too, in blocks of 32 with an f16 scale
  (Q8_0 8.5 bits, Q4_0 4.5 bits; a matrix whose rows are not whole blocks stays F16); Q4_0
  keeps the output projection (the embedding when tied) in Q8_0; 1-D tensors are F32.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import MinitronError
from ..core.shape import ModelShape
from ..core.weight_bytes import BF16, SIXTEEN, Layout, Storage
from ..core.weight_bytes import weight_bytes as _storage_bytes

COMPRESSED = "compressed-tensors"
MODELOPT = "modelopt"
GGUF = "gguf"
FORMATS = (COMPRESSED, MODELOPT, GGUF)
#: The unquantized 16-bit checkpoint, as a precision beside the schemes.
UNQUANTIZED = "bf16"

_PER_ROW_8 = Storage(Layout(8, (1, 0), scale_bytes=2))
_Q8_0 = Layout(8, (1, 32), scale_bytes=2, fallback=SIXTEEN)
_Q4_0 = Layout(4, (1, 32), scale_bytes=2, fallback=SIXTEEN)


@dataclass(frozen=True)
class Scheme:
    """One scheme: what it does, the formats it is written in (default first), how each
    format stores the weights (``storages``, in the order of ``formats``), the formats
    whose writer calibrates on text (activation ranges, or error-correcting rounding), and the
    multiple a quantized linear's input features must be (its blocks or groups)."""

    name: str
    description: str
    formats: tuple[str, ...]
    storages: tuple[Storage, ...]
    calibrated: tuple[str, ...] = ()
    column_multiple: int = 1

    def __post_init__(self) -> None:
        if len(self.storages) != len(self.formats):
            raise ValueError(f"scheme {self.name}: one storage per format")

    @property
    def default_format(self) -> str:
        return self.formats[0]

    def needs_calibration(self, fmt: str) -> bool:
        return fmt in self.calibrated

    def storage(self, fmt: str | None = None) -> Storage:
        """How ``fmt`` (default: the default format) stores the weights."""
        return self.storages[self.formats.index(resolve_format(self.name, fmt))]


SCHEMES = {s.name: s for s in (
    Scheme("fp8", "FP8 E4M3 weights per output channel, activations per token at run time "
           "(modelopt: per-tensor weights and calibrated static activations)",
           (COMPRESSED, MODELOPT),
           (_PER_ROW_8, Storage(Layout(8, scale_bytes=4, extra=4))), calibrated=(MODELOPT,)),
    Scheme("fp8-block", "FP8 E4M3 weights in 128x128 blocks, activations per group of 128 at "
           "run time", (COMPRESSED,), (Storage(Layout(8, (128, 128), scale_bytes=2)),),
           column_multiple=128),
    Scheme("int8-w8a8", "INT8 weights per output channel, activations per token at run time",
           (COMPRESSED,), (_PER_ROW_8,)),
    Scheme("w4a16", "INT4 weights in groups of 128 rounded by GPTQ on calibration text, 16-bit "
           "activations; needs llm-compressor (pip install --no-deps llmcompressor)",
           (COMPRESSED,), (Storage(Layout(4, (1, 128), scale_bytes=2, extra=16)),),
           calibrated=(COMPRESSED,), column_multiple=128),
    Scheme("nvfp4", "NVFP4 (FP4 E2M1 in blocks of 16 with FP8 scales) weights and activations, "
           "calibrated; CUDA only", (MODELOPT,),
           (Storage(Layout(4, (1, 16), scale_bytes=1, extra=8)),), calibrated=(MODELOPT,)),
    Scheme("gguf-q8_0", "GGUF Q8_0: 8-bit weights in blocks of 32 for llama.cpp", (GGUF,),
           (Storage(_Q8_0, _Q8_0, _Q8_0, _Q8_0, vector_bytes=4, rope_freqs=True),)),
    Scheme("gguf-q4_0", "GGUF Q4_0: 4-bit weights in blocks of 32 for llama.cpp", (GGUF,),
           (Storage(_Q4_0, _Q4_0, _Q8_0, _Q4_0, vector_bytes=4, rope_freqs=True),)),
)}


#: Schemes quantization-aware distillation trains through (``minitron distill --quantize``): those
#: whose compressed-tensors numerics need no calibration, so fake quantization is exactly them.
QAD_SCHEMES = ("int8-w8a8", "fp8", "fp8-block")


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; refuses unknown names, listing the known ones."""
    if name not in SCHEMES:
        raise MinitronError(f"unknown scheme {name!r}; choose from {', '.join(SCHEMES)}")
    return SCHEMES[name]


def resolve_format(scheme: str, fmt: str | None) -> str:
    """``fmt``, or the scheme's default format when None; refuses a format the scheme cannot be
    written in."""
    s = get_scheme(scheme)
    if fmt is None:
        return s.default_format
    if fmt not in s.formats:
        raise MinitronError(f"format: scheme {scheme} is written as {' or '.join(s.formats)}, "
                            f"not {fmt}")
    return fmt


def storage_of(scheme: str | None, fmt: str | None = None) -> Storage:
    """How ``scheme`` (None or ``bf16``: the unquantized 16-bit checkpoint) in ``fmt`` (default:
    its default format) stores the weights."""
    if scheme in (None, UNQUANTIZED):
        return BF16
    return get_scheme(scheme).storage(fmt)


def weight_bytes(config, scheme: str | None = None, fmt: str | None = None,
                 shape: ModelShape | None = None) -> int:
    """Predicted bytes of the weights of ``config`` (reshaped to ``shape``) quantized by
    ``scheme`` in ``fmt`` (see :func:`storage_of`): tensor data, without file headers or a
    GGUF file's tokenizer."""
    return _storage_bytes(config, storage_of(scheme, fmt), shape)
