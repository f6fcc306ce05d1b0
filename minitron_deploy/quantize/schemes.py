"""The quantization schemes ``minitron quantize`` writes, and the checkpoint formats each can be
written in.

A format names the backend that writes it: ``compressed-tensors`` (the format vLLM and SGLang
load, written by :mod:`.compressed`), ``modelopt`` (ModelOpt's unified Hugging Face checkpoint,
read by TensorRT-LLM, vLLM and SGLang, written by :mod:`.modelopt_hf`) and ``gguf`` (llama.cpp,
written by :mod:`.gguf`). A scheme's first format is its default.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import MinitronError

COMPRESSED = "compressed-tensors"
MODELOPT = "modelopt"
GGUF = "gguf"
FORMATS = (COMPRESSED, MODELOPT, GGUF)


@dataclass(frozen=True)
class Scheme:
    """One scheme: what it does, the formats it is written in (default first) and those of
    them whose writer calibrates on text (activation ranges, or error-correcting rounding)."""

    name: str
    description: str
    formats: tuple[str, ...]
    calibrated: tuple[str, ...] = ()

    @property
    def default_format(self) -> str:
        return self.formats[0]

    def needs_calibration(self, fmt: str) -> bool:
        return fmt in self.calibrated


SCHEMES = {s.name: s for s in (
    Scheme("fp8", "FP8 E4M3 weights per output channel, activations per token at run time "
           "(modelopt: per-tensor weights and calibrated static activations)",
           (COMPRESSED, MODELOPT), calibrated=(MODELOPT,)),
    Scheme("fp8-block", "FP8 E4M3 weights in 128x128 blocks, activations per group of 128 at "
           "run time", (COMPRESSED,)),
    Scheme("int8-w8a8", "INT8 weights per output channel, activations per token at run time",
           (COMPRESSED,)),
    Scheme("w4a16", "INT4 weights in groups of 128 rounded by GPTQ on calibration text, 16-bit "
           "activations; needs llm-compressor (pip install --no-deps llmcompressor)",
           (COMPRESSED,), calibrated=(COMPRESSED,)),
    Scheme("nvfp4", "NVFP4 (FP4 E2M1 in blocks of 16 with FP8 scales) weights and activations, "
           "calibrated; CUDA only", (MODELOPT,), calibrated=(MODELOPT,)),
    Scheme("gguf-q8_0", "GGUF Q8_0: 8-bit weights in blocks of 32 for llama.cpp", (GGUF,)),
    Scheme("gguf-q4_0", "GGUF Q4_0: 4-bit weights in blocks of 32 for llama.cpp", (GGUF,)),
)}


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
