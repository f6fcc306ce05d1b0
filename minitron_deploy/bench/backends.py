"""Backends: ``torch`` (our static-cache CUDA-graph fast path) and ``hf`` (stock ``generate``)
in process, ``vllm`` in the vLLM environment. Each turns one batch of prompts into a
:class:`Timing` of exactly ``osl`` tokens per request (EOS ignored). ``prepare`` and the warm-up
runs (compilation, graph capture, engine start) stay outside the timings."""

from __future__ import annotations

import time

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

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


class _StopAfterFirstToken(StoppingCriteria):
    """Ends ``generate`` once every request has its first new token (prefill plus one step)."""

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


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
    def generate(self, prompts: torch.Tensor, osl: int,
                 stopping_criteria: StoppingCriteriaList | None = None) -> torch.Tensor:
        out = self.model.generate(prompts, attention_mask=torch.ones_like(prompts),
                                  generation_config=self._config(osl),
                                  stopping_criteria=stopping_criteria)
        return out[:, prompts.shape[1]:]

    def _timed(self, prompts: torch.Tensor, osl: int,
               stopping_criteria: StoppingCriteriaList | None = None) -> tuple[float, int]:
        """Seconds of one ``generate`` and the tokens it produced."""
        synchronize(self.device)
        start = time.perf_counter()
        tokens = self.generate(prompts, osl, stopping_criteria)
        synchronize(self.device)
        return time.perf_counter() - start, tokens.numel()

    def prepare(self, batch: int) -> None:
        pass

    def run(self, prompts: torch.Tensor, osl: int) -> Timing:
        """End to end: a plain ``generate`` of ``osl`` tokens (no streamer, which would copy
        every step's tokens to the host); TTFT: the same call stopped after its first token."""
        ttft, _ = self._timed(prompts, osl, StoppingCriteriaList([_StopAfterFirstToken()]))
        e2e, tokens = self._timed(prompts, osl)
        # osl 1: both calls do the same work, and the TTFT may not exceed the whole
        return Timing(prompts.shape[0], osl, min(ttft, e2e), e2e, tokens)

    def release(self) -> None:
        pass


def run_vllm_batches(model_dir: str, config, dtype: str, prompts: dict[int, torch.Tensor],
                     osl: int, warmup: int, reps: int, eager: bool = True
                     ) -> tuple[dict[int, list[Timing]], dict]:
    """vLLM: one engine for every batch size of a model, started once in the vLLM environment
    (``ttft_s`` when every request has its first token; a quantized folder's ``quantization``
    passed on; ``eager`` False compiles and captures CUDA graphs for the batch sizes). Returns
    the timings per batch size and the engine's version and device."""
    from ..core.errors import MinitronError
    from ..serve.parity import vllm_job
    from ..serve.vllm_env import run_vllm

    isl = next(iter(prompts.values())).shape[1]
    job = {**vllm_job(model_dir, config, dtype, max(prompts), isl + osl), "enforce_eager": eager,
           "throughput": {"batches": {str(b): p.tolist() for b, p in prompts.items()},
                          "osl": osl, "warmup": warmup, "reps": reps}}
    result = run_vllm([job])
    model = result["models"][0]
    if "error" in model:
        raise MinitronError(f"vLLM cannot run {model_dir}: {model['error']}")
    timings = {int(b): [Timing(**t) for t in runs] for b, runs in model["throughput"].items()}
    return timings, {"vllm": result["vllm"], "device": result["device"]}
