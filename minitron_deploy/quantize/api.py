"""``quantize``: one call from a Hugging Face checkpoint to a quantized one that serving engines
load, in the scheme and format asked for (see ``schemes.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._version import __version__
from ..arch.modeling import atomic_dir, check_output_dir, load_config, load_model
from ..arch.quantized import refuse_quantized
from ..core.artifacts import artifact_path
from ..core.errors import MinitronError
from ..core.files import write_json_atomic
from ..core.hub import resolve_model
from ..core.precision import resolve_device, resolve_precision
from ..data.text import calibration_batches, check_seq_len, check_texts
from .schemes import COMPRESSED, GGUF, MODELOPT, get_scheme
from .settings import QuantizeSettings

#: The record of a quantization, in the output's ``minitron/`` folder.
QUANTIZE_RECORD = "quantize.json"
#: Files holding weights: the checkpoint's before, the quantized one's after.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
#: Dtypes a checkpoint's unquantized weights are kept in (anything else is written as bf16).
_KEPT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: ``write(model, tokenizer, out, calib, dtype)``: one backend for one scheme.
Writer = Callable[[torch.nn.Module, object, Path, Sequence[torch.Tensor], torch.dtype], None]


@dataclass
class QuantizeReport:
    """What ``quantize`` wrote, as in ``minitron/quantize.json``."""

    out_dir: Path
    scheme: str
    format: str
    source: Path
    bytes_before: int
    bytes_after: int
    calibration_samples: int
    seconds: dict[str, float] = field(default_factory=dict)


def weight_bytes(directory: Path) -> int:
    """Bytes of the weight files at the top of ``directory`` (safetensors, bin, pt, gguf)."""
    return sum(p.stat().st_size for p in directory.iterdir()
               if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def _writer(fmt: str, scheme: str) -> Writer:
    """The backend writing ``fmt``, imported now so that a missing one is refused in one line
    before any weight is loaded."""
    try:
        if fmt == COMPRESSED:
            from .compressed import write_compressed

            return lambda m, tok, out, calib, dtype: write_compressed(m, tok, out, scheme, calib,
                                                                     dtype)
        if fmt == GGUF:
            from .gguf import write_gguf

            return lambda m, tok, out, calib, dtype: write_gguf(m, tok, out, scheme)
        from .modelopt_hf import write_modelopt

        return lambda m, tok, out, calib, dtype: write_modelopt(m, tok, out, scheme, calib, dtype)
    except ImportError as exc:
        raise MinitronError(f"scheme {scheme} needs the {fmt} backend, which cannot be imported "
                            f"here: {exc}") from None


def _check_request(settings: QuantizeSettings, fmt: str, device: str, config,
                   calib: str | Path | None) -> Writer:
    """Every check that needs no weights: the calibration text, the device, the backend."""
    if get_scheme(settings.scheme).needs_calibration(fmt):
        if calib is None:
            raise MinitronError(f"scheme {settings.scheme} ({fmt}) calibrates on text: give "
                                "calibration data (--calib DATA)")
        check_texts(calib, settings.text_column, settings.split)
        check_seq_len(settings.seq_len, config)
    if fmt == MODELOPT:
        from .modelopt_hf import check_modelopt

        check_modelopt(settings.scheme, device)
    return _writer(fmt, settings.scheme)


def _calibration(settings: QuantizeSettings, calib: str | Path, tokenizer,
                 model_dir: Path) -> list[torch.Tensor]:
    """The calibration batches: ``calib_samples`` whole sequences of ``seq_len`` tokens, or a
    refusal naming how many the text holds (a scheme never calibrates on less than asked)."""
    if tokenizer is None:
        raise MinitronError(f"scheme {settings.scheme} calibrates on text and needs the model's "
                            f"tokenizer; {model_dir} has none")
    batches = calibration_batches(calib, tokenizer, settings.calib_samples, settings.seq_len,
                                  settings.batch_size, settings.seed, settings.text_column,
                                  settings.split)
    found = sum(len(b) for b in batches)
    if found < settings.calib_samples:
        raise MinitronError(f"calibration text {calib} holds {found} sequences of "
                            f"{settings.seq_len} tokens, fewer than calib_samples "
                            f"{settings.calib_samples}: give more text, or lower calib_samples "
                            "(--calib-samples) or seq_len (--seq-len)")
    return batches


def _kept_dtype(config) -> torch.dtype:
    """The checkpoint's dtype, which weights left unquantized keep (bf16 if it has none)."""
    dtype = getattr(config, "dtype", None)
    return dtype if dtype in _KEPT_DTYPES else torch.bfloat16


def quantize(model_dir: str | Path, out_dir: str | Path, settings: QuantizeSettings | None = None,
             calib: str | Path | None = None, **overrides) -> QuantizeReport:
    """Quantize the checkpoint in ``model_dir`` (a folder or Hub id ``org/name[@rev]``) into
    ``out_dir``.

    ``settings`` and ``overrides`` (any of :class:`QuantizeSettings`' fields by name, e.g.
    ``scheme="nvfp4"``) make the settings, checked by the schema. Schemes that calibrate read
    ``calib`` (any text source ``prune`` takes). Every check runs before any weight is loaded;
    the output is written all or nothing, with ``minitron/quantize.json`` (scheme, format,
    source, weight bytes before and after, settings).
    """
    settings = QuantizeSettings.make(settings, **overrides)
    fmt = settings.resolved_format()
    start = time.perf_counter()
    device = resolve_device(settings.device)
    model_dir = resolve_model(model_dir)
    refuse_quantized("quantize", model=model_dir)
    config = load_config(model_dir)
    check_output_dir(out_dir, model_dir)
    write = _check_request(settings, fmt, device, config, calib)
    calibrated = get_scheme(settings.scheme).needs_calibration(fmt)

    model, tokenizer = load_model(model_dir, dtype=resolve_precision(device, settings.dtype),
                                  device=device)
    batches = _calibration(settings, calib, tokenizer, model_dir) if calibrated else []
    seconds = {"load": time.perf_counter() - start}
    t0 = time.perf_counter()
    with atomic_dir(out_dir, model_dir) as tmp:
        write(model, tokenizer, tmp, batches, _kept_dtype(config))
        seconds["quantize"] = time.perf_counter() - t0
        report = write_record(tmp, out_dir, settings, model_dir, seconds, calib,
                              sum(len(b) for b in batches))
    return report


def write_record(tmp: Path, out_dir: str | Path, settings: QuantizeSettings, source: Path,
                 seconds: dict[str, float], calib: str | Path | None = None,
                 samples: int = 0) -> QuantizeReport:
    """Write ``minitron/quantize.json`` beside the checkpoint just quantized from ``source``
    into ``tmp`` (the temp folder that becomes ``out_dir``) and return its report."""
    report = QuantizeReport(Path(out_dir).resolve(), settings.scheme,
                            settings.resolved_format(), source, weight_bytes(source),
                            weight_bytes(tmp), samples, seconds)
    write_json_atomic(artifact_path(tmp, QUANTIZE_RECORD), _record(report, settings, calib))
    return report


def _record(report: QuantizeReport, settings: QuantizeSettings,
            calib: str | Path | None) -> dict:
    return {"scheme": report.scheme, "format": report.format, "source": str(report.source),
            "weight_bytes": {"before": report.bytes_before, "after": report.bytes_after},
            "calibration": {"source": str(calib), "samples": report.calibration_samples,
                            "seq_len": settings.seq_len} if report.calibration_samples else None,
            "settings": settings.record(), "seconds": report.seconds,
            "minitron_version": __version__}
