"""``benchmark()``: every model x backend x batch size, timed the same way, into one report."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..arch.modeling import DTYPES
from ..core.errors import MinitronError
from ..core.precision import resolve_precision
from ..quantize.api import weight_bytes
from .engine import check_supported
from .fp8 import check_fp8_device, check_fp8_folder, load_fp8_checkpoint, quantize_fp8
from .hardware import free_memory, machine_info, measure_limits, resolve_device
from .limits import ModelCost, memory_needed
from .metrics import median_metrics
from .models import ModelSpec, load_model, model_config

BACKENDS = ("torch", "hf", "vllm", "trtllm")


@dataclass
class BenchSettings:
    """What to run; ``batch_sizes`` applies to models without their own ``@B,...`` list;
    ``dtype`` ``auto`` is bf16 where it is faster on the device (see :mod:`..precision`)."""

    models: list[ModelSpec]
    backends: list[str] = field(default_factory=lambda: ["torch"])
    isl: int = 512
    osl: int = 128
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    reps: int = 3
    warmup: int = 1
    dtype: str = "auto"
    device: str = "auto"
    hf_cache: str = "static"
    max_throughput: bool = False
    seed: int = 0
    #: ``fp8``: the torch backend times 16-bit models (named shapes included) with their linears
    #: rounded to FP8 in memory, as ``minitron quantize --scheme fp8`` would write them.
    quantize: str | None = None

    def validate(self) -> None:
        if not self.models:
            raise MinitronError("give at least one model (a checkpoint directory or a named shape)")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise MinitronError(f"unknown backend {unknown[0] if unknown else ''!r}; choose from "
                                + ", ".join(BACKENDS))
        if self.isl < 1 or self.osl < 2:
            raise MinitronError("--isl must be >= 1 and --osl >= 2 (ITL needs two tokens)")
        if self.reps < 1 or self.warmup < 0:
            raise MinitronError("--reps must be >= 1 and --warmup >= 0")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise MinitronError(f"unknown dtype {self.dtype!r}; choose from auto, "
                                f"{', '.join(DTYPES)}")
        if self.quantize not in (None, "fp8"):
            raise MinitronError(f"in-memory quantization is fp8 only, not {self.quantize!r}; "
                                "write other schemes with minitron quantize")
        if self.quantize and self.backends != ["torch"]:
            raise MinitronError("in-memory fp8 runs on the torch backend alone; time fp8 "
                                "checkpoints (minitron quantize) on the others")

    def batches_for(self, spec: ModelSpec) -> tuple[int, ...]:
        return spec.batch_sizes or self.batch_sizes


def check_memory(settings: BenchSettings, configs: dict[str, object], device: torch.device,
                 dtype_bytes: int) -> None:
    """Refuse, before anything runs, a batch whose weights + KV cache + activations exceed
    the memory free on the device (one model is resident at a time)."""
    available = free_memory(device)
    max_len = settings.isl + settings.osl
    for spec in settings.models:
        config = configs[spec.name]
        cost = ModelCost.of(config)
        for batch in settings.batches_for(spec):
            need = memory_needed(cost, config, batch, max_len, dtype_bytes,
                                 fused_copies="torch" in settings.backends)
            if sum(need.values()) > 0.95 * available:
                parts = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in need.items())
                raise MinitronError(
                    f"{spec.label} at batch {batch} (isl {settings.isl} + osl {settings.osl}) "
                    f"needs ~{sum(need.values()) / 2**30:.1f} GiB ({parts}) but only "
                    f"{available / 2**30:.1f} GiB are free on {device}; lower --batch-sizes")


def benchmark(settings: BenchSettings, progress=print) -> dict:
    """Run the benchmark and return the report dict (see :mod:`.report` for its files); its
    settings record the dtype ``auto`` resolved to (and ``dtype_requested``)."""
    settings.validate()
    device = resolve_device(settings.device)
    configs = {spec.name: model_config(spec) for spec in settings.models}
    _check_quantized(settings, device)
    if "torch" in settings.backends:
        for config in configs.values():
            check_supported(config, settings.isl + settings.osl)
    if "trtllm" in settings.backends:
        from .trtllm import check_available

        check_available()
    if "vllm" in settings.backends:
        _check_vllm(settings)
    requested = settings.dtype
    settings = replace(settings, dtype=resolve_precision(device, requested))
    dtype = DTYPES[settings.dtype]
    dtype_bytes = torch.finfo(dtype).bits // 8
    check_memory(settings, configs, device, dtype_bytes)
    limits = measure_limits(device, dtype)
    runs = []
    for spec in settings.models:
        runs += _bench_model(settings, spec, configs[spec.name], device, dtype, limits, progress)
    return {"settings": {**_settings_dict(settings), "dtype_requested": requested},
            "machine": machine_info(device),
            "limits": {"copy_bandwidth_bytes_s": limits.bandwidth,
                       "matmul_flops_s": limits.peak_flops},
            "runs": runs}


def _check_quantized(settings: BenchSettings, device: torch.device) -> None:
    """Refuse, before anything runs, a quantized checkpoint on a backend that would not run
    its kernels (trtllm takes 16-bit weights, the fast path those and fp8 compressed-tensors
    ones, whose FP8 GEMM this device must have) or that vLLM has no kernel for on this
    device."""
    from ..serve.quant_support import detect_hardware, vllm_kernel

    for spec in settings.models:
        quant = spec.quantization
        if quant is not None and settings.quantize:
            raise MinitronError(f"{spec.label} is already quantized ({quant.label}); in-memory "
                                "fp8 takes 16-bit models")
        if "torch" in settings.backends and quant:
            check_fp8_folder(spec.name)
        if "torch" in settings.backends and (quant or settings.quantize):
            check_fp8_device(device, spec.label)
        if quant is None:
            continue
        if "trtllm" in settings.backends:
            raise MinitronError(f"the trtllm backend times 16-bit weights; {spec.label} is "
                                f"{quant.label}: time it with --backend vllm")
        if "vllm" in settings.backends:
            vllm_kernel(quant, detect_hardware(device.type))


def _check_vllm(settings: BenchSettings) -> None:
    """Refuse, before anything runs, a missing vLLM environment or a model with no directory."""
    from ..serve.vllm_env import vllm_python

    vllm_python()
    named = [s.name for s in settings.models if s.random_weights]
    if named:
        raise MinitronError(f"the vllm backend needs checkpoint directories with weights, not "
                            f"{named[0]!r}; prune or export one first")


def _settings_dict(settings: BenchSettings) -> dict:
    return {"models": [s.name for s in settings.models], "backends": settings.backends,
            "isl": settings.isl, "osl": settings.osl,
            "batch_sizes": {s.label: list(settings.batches_for(s)) for s in settings.models},
            "reps": settings.reps, "warmup": settings.warmup, "dtype": settings.dtype,
            "hf_cache": settings.hf_cache, "max_throughput": settings.max_throughput,
            "seed": settings.seed, "quantize": settings.quantize}


def _bench_model(settings, spec, config, device, dtype, limits, progress) -> list[dict]:
    cost = ModelCost.of(config)
    dtype_bytes = torch.finfo(dtype).bits // 8
    max_len = settings.isl + settings.osl
    runs = []
    model = None
    for i, name in enumerate(settings.backends):
        if name == "trtllm":
            from .trtllm import run_trtllm

            runs += run_trtllm(spec, config, settings, progress)
            continue
        if name == "vllm":
            runs += _bench_vllm(settings, spec, config, cost, dtype_bytes, limits, progress)
            continue
        if name == "torch" and (spec.quantization or settings.quantize):
            backend = _make_backend(name, _fp8_model(spec, settings, device, dtype), max_len,
                                    settings)
        else:
            if model is None:
                model = load_model(spec, device, dtype)
            backend = _make_backend(name, model, max_len, settings)
            if name == "torch" and "hf" not in settings.backends[i + 1:]:
                model = None  # the fast path keeps only its fused weights; free the unfused ones
        for batch in settings.batches_for(spec):
            progress(f"{spec.label} [{name}] batch {batch}: warm-up and {settings.reps} runs")
            record = _bench_batch(backend, batch, settings, device, config.vocab_size)
            runs.append(_finish_record(record, spec, config, name, cost, dtype_bytes, limits,
                                       settings, progress))
        backend.release()
        del backend
        gc.collect()
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return runs


def _fp8_model(spec: ModelSpec, settings: BenchSettings, device: torch.device,
               dtype: torch.dtype):
    """The fast path's FP8 model: a folder's FP8 weights as stored, or a 16-bit model rounded
    in memory (``settings.quantize``)."""
    if spec.quantization:
        return load_fp8_checkpoint(spec.name, device, dtype)
    return quantize_fp8(load_model(spec, device, dtype))


def _scheme_and_bytes(spec: ModelSpec, config, settings: BenchSettings,
                      dtype_bytes: int) -> tuple[str, int]:
    """The scheme a run times and its weight bytes (a folder's files; in-memory fp8: what
    ``minitron quantize`` would write)."""
    quant = spec.quantization
    if quant:
        return quant.label, weight_bytes(Path(spec.name))
    if settings.quantize:
        from ..quantize.schemes import weight_bytes as scheme_bytes

        return f"{settings.quantize} (in memory)", scheme_bytes(config, settings.quantize)
    return settings.dtype, ModelCost.of(config).params * dtype_bytes


def _finish_record(record: dict, spec: ModelSpec, config, name: str, cost: ModelCost,
                   dtype_bytes: int, limits, settings: BenchSettings, progress) -> dict:
    """Add the model, backend and roofline fractions to a timed record; report its speed."""
    metrics = record["metrics"]
    itl = metrics["itl_ms"]
    quantized = bool(spec.quantization or settings.quantize)
    scheme, nbytes = _scheme_and_bytes(spec, config, settings, dtype_bytes)
    record.update(model=spec.label, backend=name, params=cost.params, scheme=scheme,
                  weight_bytes=nbytes)
    # the limits assume 16-bit weights: none for a quantized model
    record["limits"] = {} if quantized else limits.report(
        cost, record["batch"], settings.isl, settings.osl, dtype_bytes, itl and itl / 1e3,
        metrics["ttft_ms"] / 1e3, metrics["e2e_s"])
    fraction = record["limits"].get("decode_fraction")
    progress(f"  {metrics['output_tok_s']:.1f} tok/s"
             + (f", decode at {100 * fraction:.0f}% of limit" if fraction else ""))
    return record


def _bench_vllm(settings: BenchSettings, spec: ModelSpec, config, cost: ModelCost,
                dtype_bytes: int, limits, progress) -> list[dict]:
    """Every batch size of one model in one vLLM engine run (same prompts as the others)."""
    from .backends import run_vllm_batches

    batches = settings.batches_for(spec)
    progress(f"{spec.label} [vllm] batches {', '.join(map(str, batches))}: engine start, "
             f"warm-up and {settings.reps} runs each")
    prompts = {b: _prompts(b, settings, config.vocab_size) for b in batches}
    timed, engine = run_vllm_batches(spec.name, config, settings.dtype, prompts, settings.osl,
                                     settings.warmup, settings.reps,
                                     eager=resolve_device(settings.device).type != "cuda")
    runs = []
    for batch in batches:
        record = _timed_record(batch, settings, timed[batch], peak=None)
        record["engine"] = engine
        runs.append(_finish_record(record, spec, config, "vllm", cost, dtype_bytes, limits,
                                   settings, progress))
    return runs


def _make_backend(name: str, model, max_len: int, settings: BenchSettings):
    from .backends import HFBackend, TorchBackend

    if name == "torch":
        return TorchBackend(model, max_len)
    return HFBackend(model, cache=settings.hf_cache)


def _bench_batch(backend, batch: int, settings: BenchSettings, device: torch.device,
                 vocab: int) -> dict:
    prompts = _prompts(batch, settings, vocab).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        backend.prepare(batch)
        for _ in range(settings.warmup):
            backend.run(prompts, settings.osl)
        timings = [backend.run(prompts, settings.osl) for _ in range(settings.reps)]
    except torch.cuda.OutOfMemoryError:
        raise MinitronError(f"out of GPU memory at batch {batch}; lower --batch-sizes")
    finally:
        backend.release()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return _timed_record(batch, settings, timings, peak)


def _prompts(batch: int, settings: BenchSettings, vocab: int) -> torch.Tensor:
    """The same random prompts for every backend (seeded by ``settings.seed``)."""
    generator = torch.Generator().manual_seed(settings.seed)
    return torch.randint(0, vocab, (batch, settings.isl), generator=generator)


def _timed_record(batch: int, settings: BenchSettings, timings: list, peak: int | None) -> dict:
    return {"batch": batch, "isl": settings.isl, "osl": settings.osl,
            "metrics": median_metrics(timings).as_dict(),
            "repetitions": [t.__dict__ for t in timings], "peak_memory_bytes": peak}
