"""Every setting of a quantization in one schema: ``minitron quantize``'s flags,
:func:`~minitron_deploy.quantize.api.quantize`'s keywords (and a recipe section) are all read
off it (see ``core/schema.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..arch.modeling import DTYPES
from ..core.precision import DEVICES, device_problem
from ..core.schema import at_least, setting
from ..data.text import TextSettings
from .schemes import FORMATS, SCHEMES, resolve_format

_SCHEMES = "; ".join(f"{s.name}: {s.description}" for s in SCHEMES.values())


@dataclass
class QuantizeSettings(TextSettings):
    """A quantization's settings (the model, its calibration text and the output are its
    inputs): where a table's text is (:class:`TextSettings`), then these."""

    scheme: str = setting("fp8", f"quantization scheme ({_SCHEMES})", choices=tuple(SCHEMES))
    format: str | None = setting(
        None, "checkpoint format: compressed-tensors (vLLM, SGLang), modelopt (ModelOpt's "
        "unified HF checkpoint, for fp8 and nvfp4) or gguf (llama.cpp)", choices=FORMATS,
        unset="the scheme's own: modelopt for nvfp4, gguf for gguf-*, else compressed-tensors")
    calib_samples: int = setting(256, "calibration sequences of seq_len tokens (schemes that "
                                 "calibrate)", check=at_least(1))
    seq_len: int = setting(512, "tokens per calibration sequence", check=at_least(2))
    batch_size: int = setting(8, "calibration sequences per forward", check=at_least(1))
    seed: int = setting(0, "seed of the calibration samples")
    device: str = setting("auto", f"where the model is loaded and calibrated: {DEVICES} "
                          "(auto: CUDA when a GPU is visible, else the CPU)", check=device_problem)
    dtype: str = setting("auto", "precision the model is loaded and calibrated in (auto: bf16 "
                         "where it is faster, i.e. GPUs and CPUs with AMX, else fp32)",
                         choices=("auto", *sorted(DTYPES)))

    def __post_init__(self) -> None:
        super().__post_init__()
        resolve_format(self.scheme, self.format)

    def resolved_format(self) -> str:
        """``format``, or the scheme's default when it is not given."""
        return resolve_format(self.scheme, self.format)
