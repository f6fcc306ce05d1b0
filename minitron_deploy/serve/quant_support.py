"""Which engine runs which quantized checkpoint on which hardware: one table (scheme x format x
engine -> kernel and what the hardware needs for it), the hardware detected here, and the
one-line refusal, naming what would work, for a folder vLLM has no kernel for on this machine.

The vLLM rows are read off vLLM 0.32's kernel selection (``get_min_capability`` of each
compressed-tensors and ModelOpt scheme; the CPU kernels' ``is_supported``), and the CPU rows
for int8-w8a8 and fp8 were run on an AVX2 CPU (tests/test_serve_quantized.py). README.md's
engine table is :func:`markdown_table`'s output.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import MinitronError
from ..core.precision import resolve_device
from ..core.quantized import COMPRESSED, GGUF, MODELOPT, Quantization

TRANSFORMERS, VLLM_CPU, VLLM_GPU, TRTLLM, LLAMA_CPP = (
    "transformers", "vLLM CPU", "vLLM GPU", "TensorRT-LLM", "llama.cpp")
ENGINES = (TRANSFORMERS, VLLM_CPU, VLLM_GPU, TRTLLM, LLAMA_CPP)
_CUDA_ENGINES = (VLLM_GPU, TRTLLM)
#: /proc/cpuinfo flags the CPU kernels need -> how they are called.
CPU_FLAGS = {"avx512f": "AVX-512", "amx_tile": "AMX"}


@dataclass(frozen=True)
class Kernel:
    """One way ``engine`` runs a scheme written in one of ``formats``: ``kernel`` names it;
    CUDA engines need compute capability ``min_sm`` (89 = sm_89) or newer, vLLM CPU the
    ``cpu_flags``; ``weight_only`` kernels keep activations in 16 bits."""

    engine: str
    formats: tuple[str, ...]
    kernel: str
    min_sm: int = 0
    cpu_flags: tuple[str, ...] = ()
    weight_only: bool = False

    @property
    def requirement(self) -> str:
        if self.engine in _CUDA_ENGINES:
            return f"sm_{self.min_sm}+"
        if self.cpu_flags:
            return " + ".join(CPU_FLAGS[f] for f in self.cpu_flags)
        return "any x86" if self.engine == VLLM_CPU else "any"

    def where(self) -> str:
        """``engine (requirement: kernel)``, as refusals name it."""
        return f"{self.engine} ({self.requirement}: {self.kernel})"


_CT, _MO, _GG = (COMPRESSED,), (MODELOPT,), (GGUF,)
_HF = Kernel(TRANSFORMERS, _CT, "compressed-tensors, decompressed on load")
_GGUF = (Kernel(TRANSFORMERS, _GG, "dequantized on load (gguf_file=)"),
         Kernel(LLAMA_CPP, _GG, "GGML kernels, CPU and GPU (llama-server -m model.gguf)"))
_TRT_FP8 = Kernel(TRTLLM, _CT + _MO, "FP8 checkpoint from minitron export --format trtllm",
                  min_sm=89)

#: scheme -> every kernel that runs it, preferred first per engine.
SUPPORT: dict[str, tuple[Kernel, ...]] = {
    "fp8": (_HF,
            Kernel(VLLM_CPU, _CT, "FP8 GEMM in torch (AMX-FP8 kernel where present)"),
            Kernel(VLLM_CPU, _MO, "AMX FP8 per-tensor", cpu_flags=("amx_tile",)),
            Kernel(VLLM_GPU, _CT + _MO, "CUTLASS FP8 W8A8", min_sm=89),
            Kernel(VLLM_GPU, _CT, "Marlin FP8", min_sm=75, weight_only=True),
            Kernel(VLLM_GPU, _MO, "Marlin FP8", min_sm=80, weight_only=True),
            _TRT_FP8),
    "fp8-block": (_HF,
                  Kernel(VLLM_CPU, _CT, "AMX FP8 block", cpu_flags=("amx_tile",),
                         weight_only=True),
                  Kernel(VLLM_GPU, _CT, "DeepGEMM / CUTLASS FP8 block W8A8", min_sm=89),
                  Kernel(VLLM_GPU, _CT, "Marlin FP8", min_sm=75, weight_only=True)),
    "int8-w8a8": (_HF,
                  Kernel(VLLM_CPU, _CT, "oneDNN INT8 W8A8"),
                  Kernel(VLLM_GPU, _CT, "CUTLASS INT8 W8A8", min_sm=75)),
    "w4a16": (_HF,
              Kernel(VLLM_CPU, _CT, "CPU W4A16", cpu_flags=("avx512f",), weight_only=True),
              Kernel(VLLM_GPU, _CT, "Marlin / Machete W4A16", min_sm=75, weight_only=True)),
    "nvfp4": (Kernel(VLLM_GPU, _MO, "FP4 tensor cores W4A4", min_sm=100),
              Kernel(VLLM_GPU, _MO, "Marlin FP4", min_sm=75, weight_only=True),
              Kernel(TRTLLM, _MO, "NVFP4, the ModelOpt checkpoint as is", min_sm=100)),
    "gguf-q8_0": _GGUF,
    "gguf-q4_0": _GGUF,
}


@dataclass(frozen=True)
class Hardware:
    """Where the engine runs: a CUDA GPU (``sm``: compute capability as 90 for 9.0) or the CPU
    (``cpu_flags``: those of :data:`CPU_FLAGS` it has)."""

    kind: str
    name: str
    sm: int = 0
    cpu_flags: frozenset[str] = frozenset()

    def runs(self, kernel: Kernel) -> bool:
        """Whether ``kernel`` runs here."""
        if kernel.engine in _CUDA_ENGINES:
            return self.kind == "cuda" and self.sm >= kernel.min_sm
        if kernel.engine == VLLM_CPU:
            return self.kind == "cpu" and set(kernel.cpu_flags) <= self.cpu_flags
        return True

    @property
    def vllm_engine(self) -> str:
        return VLLM_GPU if self.kind == "cuda" else VLLM_CPU


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The :data:`CPU_FLAGS` this CPU has (none where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(CPU_FLAGS) & set(line.partition(":")[2].split())


@functools.cache
def detect_hardware(device: str = "auto") -> Hardware:
    """The GPU vLLM would use (``auto``: one is visible to torch), else this CPU."""
    if resolve_device(device).startswith("cuda"):
        major, minor = torch.cuda.get_device_capability()
        return Hardware("cuda", f"{torch.cuda.get_device_name()} (sm_{major}{minor})",
                        sm=10 * major + minor)
    return Hardware("cpu", f"CPU ({torch.backends.cpu.get_cpu_capability()})",
                    cpu_flags=cpu_flags())


def kernels_for(quant: Quantization) -> list[Kernel]:
    """The kernels that run ``quant`` (its scheme in its format), in table order."""
    schemes = [quant.scheme] if quant.scheme else [s for s in SUPPORT if s.startswith("gguf")] \
        if quant.format == GGUF else []
    found = [k for s in schemes for k in SUPPORT.get(s, ()) if quant.format in k.formats]
    return list(dict.fromkeys(found))


def vllm_kernel(quant: Quantization | None, hardware: Hardware) -> Kernel | None:
    """The kernel vLLM runs ``quant`` with on ``hardware``; None for a 16-bit checkpoint or a
    scheme this table does not know (vLLM decides). Refuses, in one line naming what would
    run it, a quantized folder vLLM has no kernel for here."""
    if quant is None or (quant.scheme is None and quant.format != GGUF):
        return None
    kernels = kernels_for(quant)
    here = [k for k in kernels if k.engine == hardware.vllm_engine]
    usable = [k for k in here if hardware.runs(k)]
    if usable:
        return usable[0]
    missing = f"needs {' or '.join(k.requirement for k in here)}" if here else "has no kernel"
    others = "; ".join(k.where() for k in kernels if k not in here) or "none"
    raise MinitronError(f"{hardware.vllm_engine} cannot run {quant.label} on this "
                        f"{hardware.name}: it {missing}; runs on: {others}")


def _cell(scheme: str, engine: str) -> str:
    kernels = [k for k in SUPPORT[scheme] if k.engine == engine]
    multi = len({f for k in SUPPORT[scheme] for f in k.formats}) > 1
    parts = [k.requirement + (" weight-only" if k.weight_only else "")
             + (f" ({'/'.join(k.formats)})" if multi and len(k.formats) == 1 else "")
             for k in kernels]
    return ", ".join(parts) or "-"


def markdown_table() -> str:
    """The scheme x engine table (hardware each needs) README.md shows."""
    lines = ["| scheme | " + " | ".join(ENGINES) + " |", "|---" * (len(ENGINES) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(_cell(s, e) for e in ENGINES) + " |" for s in SUPPORT]
    return "\n".join(lines) + "\n"
