"""Backends: ``torch`` (our static-cache CUDA-graph fast path) and ``hf`` (stock ``generate``)
in process, ``vllm`` in the vLLM environment. Each turns one batch of prompts into a
:class:`Timing` of exactly ``osl`` tokens per request (EOS ignored). ``prepare`` and the warm-up
runs (compilation, graph capture, engine start) stay outside the timings."""

from __future__ import annotations

import time

import torch
from transformers import GenerationConfig

from .engine import EngineWeights
from .generator import StaticGenerator
from .hardware import synchronize
from .metrics import Timing


class TorchBackend:
    """The fast path: fused weights held once per model, one :class:`StaticGenerator` per batch."""

    name = "torch"

    def __init__(self, model, max_len: int):
        self.weights = EngineWeights(model, max_len)
        self.max_len = max_len
        self.device = self.weights.embed.device
        self.generator: StaticGenerator | None = None

    def prepare(self, batch: int) -> None:
        """Allocate the batch's cache; on CUDA compile and capture the decode graph."""
        self.generator = StaticGenerator(self.weights, batch, self.max_len)
        self.generator.capture()

    def run(self, prompts: torch.Tensor, osl: int) -> Timing:
        gen = self.generator
        synchronize(self.device)
        start = time.perf_counter()
        gen.prefill(prompts)
        synchronize(self.device)
        first = time.perf_counter()
        gen.decode(osl - 1)
        synchronize(self.device)
        end = time.perf_counter()
        tokens = gen.generated(prompts.shape[1], osl)
        return Timing(prompts.shape[0], osl, first - start, end - start, tokens.numel())

    def release(self) -> None:
        self.generator = None


class _FirstTokenClock:
    """A ``generate`` streamer that notes when the first new tokens reach the host."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class HFBackend:
    """Stock ``model.generate`` (greedy), with transformers' static cache by default."""

    name = "hf"

    def __init__(self, model, cache: str = "static"):
        self.model, self.cache = model, cache
        self.device = next(model.parameters()).device
        # generate() fills unset fields from the model's own config: clear EOS there too
        model.generation_config.eos_token_id = None

    def _config(self, osl: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=osl, min_new_tokens=0, do_sample=False,
                                eos_token_id=None, pad_token_id=0,
                                cache_implementation=None if self.cache == "dynamic" else "static")

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, osl: int, streamer=None) -> torch.Tensor:
        out = self.model.generate(prompts, attention_mask=torch.ones_like(prompts),
                                  generation_config=self._config(osl), streamer=streamer)
        return out[:, prompts.shape[1]:]

    def prepare(self, batch: int) -> None:
        pass

    def run(self, prompts: torch.Tensor, osl: int) -> Timing:
        clock = _FirstTokenClock()
        synchronize(self.device)
        start = time.perf_counter()
        tokens = self.generate(prompts, osl, streamer=clock)
        synchronize(self.device)
        end = time.perf_counter()
        return Timing(prompts.shape[0], osl, clock.first - start, end - start, tokens.numel())

    def release(self) -> None:
        pass


def run_vllm_batches(model_dir: str, config, dtype: str, prompts: dict[int, torch.Tensor],
                     osl: int, warmup: int, reps: int) -> tuple[dict[int, list[Timing]], dict]:
    """vLLM: one engine for every batch size of a model, started once in the vLLM environment
    (``ttft_s`` when every request has its first token). Returns the timings per batch size
    and the engine's version and device."""
    from ..errors import MinitronError
    from ..serve.vllm_env import VLLM_DTYPES, kv_cache_bytes, run_vllm, vllm_overrides

    isl = next(iter(prompts.values())).shape[1]
    dtype_bytes = torch.finfo(getattr(torch, VLLM_DTYPES[dtype])).bits // 8
    job = {"model": str(model_dir), "dtype": VLLM_DTYPES[dtype], "max_model_len": isl + osl,
           "kv_cache_bytes": kv_cache_bytes(config, max(prompts), isl + osl, dtype_bytes),
           "hf_overrides": vllm_overrides(config),
           "throughput": {"batches": {str(b): p.tolist() for b, p in prompts.items()},
                          "osl": osl, "warmup": warmup, "reps": reps}}
    result = run_vllm([job])
    model = result["models"][0]
    if "error" in model:
        raise MinitronError(f"vLLM cannot run {model_dir}: {model['error']}")
    timings = {int(b): [Timing(**t) for t in runs] for b, runs in model["throughput"].items()}
    return timings, {"vllm": result["vllm"], "device": result["device"]}
