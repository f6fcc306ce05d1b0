"""Runs inside the vLLM environment, as a script: ``python vllm_runner.py JOB.json RESULT.json``.

It imports only the standard library and vLLM (not this package, whose dependencies that
environment does not have). Models run one after another in this process (the engine core in
process, so vLLM is imported once), each as given in the job::

    {"models": [{"model": DIR, "dtype": "float32", "max_model_len": N, "kv_cache_bytes": B,
                 "hf_overrides": {...} or null, "quantization": "compressed-tensors" or null,
                 "enforce_eager": true (default) or false (compiled, with CUDA graphs captured
                 for the throughput batch sizes),
                 "generate": {"prompts": [[ids]], "max_tokens": N, "logprobs": K},
                 "score": {"prompts": [[ids]]},
                 "throughput": {"batches": {"B": [[ids]] * B}, "osl": N, "warmup": W, "reps": R}}]}

``generate``: greedy token ids (EOS ignored) and each step's top-K logprobs. ``score``: per
prompt, the logprob of each of its tokens after the first given those before. ``throughput``:
per batch size, ``reps`` timed runs after ``warmup`` untimed ones, each a :class:`Timing`-shaped
dict (``ttft_s`` when every request has its first token, ``e2e_s`` when all are done). A model
that fails gets ``{"error": "one line"}`` and the next one still runs.
"""

import gc
import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process for every model
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # no API frontend to keep a core for


def _engine(job: dict):
    from vllm import LLM

    eager = job.get("enforce_eager", True)
    batches = (job.get("throughput") or {}).get("batches", {})
    graphs = {} if eager or not batches else {
        "compilation_config": {"cudagraph_capture_sizes": sorted(map(int, batches))}}
    return LLM(model=job["model"], dtype=job["dtype"], max_model_len=job["max_model_len"],
               kv_cache_memory_bytes=job["kv_cache_bytes"], hf_overrides=job.get("hf_overrides"),
               quantization=job.get("quantization"), enforce_eager=eager,
               skip_tokenizer_init=True, seed=0, trust_remote_code=False, **graphs)


def _greedy(llm, spec: dict) -> list[dict]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True,
                            logprobs=spec["logprobs"], detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]], params,
                           use_tqdm=False)
    results = []
    for out in outputs:
        completion = out.outputs[0]
        steps = [{str(tok): lp.logprob for tok, lp in step.items()}
                 for step in completion.logprobs or []]
        results.append({"token_ids": list(completion.token_ids), "logprobs": steps})
    return results


def _score(llm, spec: dict) -> list[list[float]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]], params,
                           use_tqdm=False)
    return [[step[tok].logprob for tok, step in zip(out.prompt_token_ids[1:],
                                                    out.prompt_logprobs[1:])]
            for out in outputs]


def _timed_run(engine, prompts: list[list[int]], osl: int, tag: str) -> dict:
    """One batch, every request exactly ``osl`` tokens, driven step by step."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(temperature=0.0, max_tokens=osl, min_tokens=osl, ignore_eos=True,
                            detokenize=False, output_kind=RequestOutputKind.DELTA)
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    start = time.perf_counter()
    for rid, prompt in zip(ids, prompts):
        engine.add_request(rid, TokensPrompt(prompt_token_ids=prompt), params)
    waiting, first, tokens = set(ids), None, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            new = len(out.outputs[0].token_ids)
            tokens += new
            if new:
                waiting.discard(out.request_id)
        if first is None and not waiting:
            first = time.perf_counter()
    end = time.perf_counter()
    return {"batch": len(prompts), "osl": osl, "ttft_s": first - start, "e2e_s": end - start,
            "output_tokens": tokens}


def _throughput(llm, spec: dict, name: str) -> dict[str, list[dict]]:
    engine, result = llm.llm_engine, {}
    for batch, prompts in spec["batches"].items():
        for w in range(spec["warmup"]):
            _timed_run(engine, prompts, spec["osl"], f"{name}-b{batch}-w{w}")
        result[batch] = [_timed_run(engine, prompts, spec["osl"], f"{name}-b{batch}-r{r}")
                         for r in range(spec["reps"])]
    return result


def _run_model(job: dict, index: int) -> dict:
    llm = None
    try:
        llm = _engine(job)
        out: dict = {}
        if job.get("generate"):
            out["generate"] = _greedy(llm, job["generate"])
        if job.get("score"):
            out["score"] = _score(llm, job["score"])
        if job.get("throughput"):
            out["throughput"] = _throughput(llm, job["throughput"], f"m{index}")
        return out
    except Exception as exc:  # vLLM raises many types for models it cannot run
        lines = str(exc).strip().splitlines() or [""]
        return {"error": f"{type(exc).__name__}: {lines[0]}"}
    finally:
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        del llm
        _settle()


def _settle() -> None:
    """Collect garbage, then exempt what survives (vLLM, torch) from the collections vLLM
    runs while it loads the next model: each would otherwise scan every imported object."""
    gc.collect()
    gc.freeze()


def main(job_path: str, result_path: str) -> None:
    import vllm
    from vllm.platforms import current_platform

    job = json.loads(open(job_path).read())
    _settle()
    models = [_run_model(model, i) for i, model in enumerate(job["models"])]
    result = {"vllm": vllm.__version__, "device": current_platform.device_type, "models": models}
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
