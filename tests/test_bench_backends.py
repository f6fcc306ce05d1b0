"""The hf backend times stock ``generate`` as a user calls it: no streamer on the timed call."""

from tiny_models import tiny_batch, tiny_model

from minitron_deploy.bench.backends import HFBackend


def test_hf_backend_times_generate_without_a_streamer():
    model = tiny_model("llama")
    prompts = tiny_batch(batch=2, seq=6)
    calls = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        calls.append((kwargs, out.shape[1] - prompts.shape[1]))
        return out
    model.generate = recording_generate
    timing = HFBackend(model, cache="dynamic").run(prompts, 5)
    assert all(kwargs.get("streamer") is None for kwargs, _ in calls)
    (ttft_call, ttft_tokens), (timed_call, timed_tokens) = calls
    assert ttft_call["stopping_criteria"] and ttft_tokens == 1  # prefill and the first token
    assert timed_call["stopping_criteria"] is None and timed_tokens == 5
    assert timing.output_tokens == 2 * 5 and 0 < timing.ttft_s <= timing.e2e_s
