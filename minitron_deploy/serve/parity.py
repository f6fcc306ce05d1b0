"""Greedy parity of vLLM with transformers: the same checkpoints and prompts through both, and
how far they agree (first differing position, logprob gaps) where they do not; and vLLM's
perplexity of given token sequences (its prompt logprobs)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from transformers import GenerationConfig

from ..arch.modeling import DTYPES, load_config, load_model
from ..core.errors import MinitronError
from ..core.quantized import read_quantization
from .vllm_env import VLLM_DTYPES, kv_cache_bytes, run_vllm, vllm_overrides

#: Top logprobs vLLM returns per step (enough to hold transformers' token near a tie).
TOP_LOGPROBS = 5


@dataclass(frozen=True)
class Parity:
    """One model and prompt. ``max_logprob_gap``: the largest |vLLM - transformers| logprob of
    the chosen token over the shared prefix; at ``first_diff`` (None when identical),
    ``hf_margin`` is transformers' logprob of its token minus that of vLLM's token (how close
    to a tie it was) and ``vllm_margin`` the same seen from vLLM (None when vLLM's top
    logprobs do not hold transformers' token)."""

    model: str
    prompt: int
    hf_tokens: list[int]
    vllm_tokens: list[int]
    first_diff: int | None
    max_logprob_gap: float
    hf_margin: float | None
    vllm_margin: float | None

    @property
    def identical(self) -> bool:
        return self.first_diff is None

    def as_dict(self) -> dict:
        return {**asdict(self), "identical": self.identical}


@torch.no_grad()
def hf_greedy(model, prompt: list[int], new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy ``generate`` with EOS neither stopping nor suppressed (as vLLM's
    ``ignore_eos``): the tokens and each step's logprobs over the vocabulary ``[new_tokens, V]``.
    Clears EOS in the model's generation config, whose fields fill unset ones."""
    ids = torch.tensor([prompt])
    model.generation_config.eos_token_id = None
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                              pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    logprobs = torch.log_softmax(torch.cat(out.logits).float(), dim=-1)
    return out.sequences[0, len(prompt):].tolist(), logprobs


def compare(model: str, prompt: int, hf_tokens: list[int], hf_logprobs: torch.Tensor,
            vllm: dict) -> Parity:
    """Compare one prompt's transformers result with the runner's (``token_ids``, ``logprobs``)."""
    tokens, steps = vllm["token_ids"], vllm["logprobs"]
    first = next((i for i, (a, b) in enumerate(zip(hf_tokens, tokens)) if a != b), None)
    if first is None and len(hf_tokens) != len(tokens):
        first = min(len(hf_tokens), len(tokens))
    shared = len(hf_tokens) if first is None else first
    gap = max((abs(steps[i][str(tokens[i])] - hf_logprobs[i, tokens[i]].item())
               for i in range(shared)), default=0.0)
    hf_margin = vllm_margin = None
    if first is not None and first < min(len(hf_tokens), len(tokens)):
        hf_tok, vllm_tok = hf_tokens[first], tokens[first]
        hf_margin = (hf_logprobs[first, hf_tok] - hf_logprobs[first, vllm_tok]).item()
        seen = steps[first].get(str(hf_tok))
        vllm_margin = None if seen is None else steps[first][str(vllm_tok)] - seen
    return Parity(model, prompt, hf_tokens, tokens, first, gap, hf_margin, vllm_margin)


def vllm_job(model_dir: str, config, dtype: str, sequences: int, max_len: int) -> dict:
    """The runner's job for one model (``quantization`` from the folder) with a KV cache for
    ``sequences`` of ``max_len`` tokens; add ``generate``, ``score`` or ``throughput``."""
    quant = read_quantization(model_dir)
    return {"model": str(model_dir), "dtype": VLLM_DTYPES[dtype], "max_model_len": max_len,
            "kv_cache_bytes": kv_cache_bytes(config, sequences, max_len, DTYPES[dtype].itemsize),
            "hf_overrides": vllm_overrides(config),
            "quantization": quant.vllm_method if quant else None}


def vllm_perplexity(model_dir: str, sequences: list[list[int]], dtype: str = "fp32",
                    threads: int | None = None) -> float:
    """Perplexity of ``sequences`` (every token after each one's first) under vLLM's prompt
    logprobs, as :func:`..eval.perplexity` computes it with transformers."""
    job = vllm_job(model_dir, load_config(model_dir), dtype, len(sequences), max(map(len, sequences)))
    out = run_vllm([{**job, "score": {"prompts": sequences}}], threads=threads)["models"][0]
    if "error" in out:
        raise MinitronError(f"vLLM cannot run {model_dir}: {out['error']}")
    logprobs = [lp for seq in out["score"] for lp in seq]
    return math.exp(-sum(logprobs) / len(logprobs))


def greedy_parity(model_dirs: list[str], prompts: list[list[int]], new_tokens: int = 16,
                  dtype: str = "fp32", threads: int | None = None
                  ) -> tuple[list[Parity], dict[str, str], dict]:
    """Every model on every prompt through transformers and vLLM (one engine process for all,
    with ``threads`` as in :func:`run_vllm`).

    Returns the comparisons, the models vLLM could not run (with its one-line reason) and the
    engine (vLLM version and device).
    """
    max_len = max(map(len, prompts)) + new_tokens
    jobs = [{**vllm_job(d, load_config(d), dtype, len(prompts), max_len),
             "generate": {"prompts": prompts, "max_tokens": new_tokens,
                          "logprobs": TOP_LOGPROBS}} for d in model_dirs]
    result = run_vllm(jobs, threads=threads)
    parities, failed = [], {}
    for model_dir, out in zip(model_dirs, result["models"]):
        if "error" in out:
            failed[str(model_dir)] = out["error"]
            continue
        model = load_model(model_dir, dtype=dtype)[0]
        for i, (prompt, vllm) in enumerate(zip(prompts, out["generate"])):
            tokens, logprobs = hf_greedy(model, prompt, new_tokens)
            parities.append(compare(str(model_dir), i, tokens, logprobs, vllm))
    return parities, failed, {"vllm": result["vllm"], "device": result["device"]}


def summary(parities: list[Parity]) -> dict:
    """Counts and the worst gaps over a set of comparisons."""
    diffs = [p for p in parities if not p.identical]
    return {"prompts": len(parities), "identical": len(parities) - len(diffs),
            "max_logprob_gap": max((p.max_logprob_gap for p in parities), default=0.0),
            "earliest_diff": min((p.first_diff for p in diffs), default=None),
            "largest_hf_margin_at_diff": max((p.hf_margin for p in diffs
                                              if p.hf_margin is not None), default=None)}
