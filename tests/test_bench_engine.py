"""The torch backend's fast path gives exactly Hugging Face ``generate``'s greedy tokens."""

import pytest
import torch
from tiny_models import tiny_batch, tiny_model
from transformers import GenerationConfig

from minitron_deploy.bench.engine import EngineWeights
from minitron_deploy.bench.generator import StaticGenerator
from minitron_deploy.core.errors import MinitronError


def hf_greedy(model, ids, new_tokens):
    """Greedy ``generate`` with EOS ignored (not suppressed), like the benchmark."""
    model.generation_config.eos_token_id = None  # generate() falls back to it otherwise
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("family", ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "phi3",
                                    "olmo2"])
def test_greedy_tokens_equal_hf_generate(family):
    # tied embeddings at the default init make every sequence repeat its last token
    model = tiny_model(family, initializer_range=0.2)
    ids = tiny_batch(batch=3, seq=11)
    generator = StaticGenerator(EngineWeights(model, 40), batch=3, max_len=40)
    ours = generator.generate(ids, 16)
    reference = hf_greedy(model, ids, 16)
    assert ours.shape == (3, 16)
    assert len(torch.unique(reference)) > 4  # a real sequence, not one repeated token
    assert torch.equal(ours, reference)
    # a second generation on the same cache buffers (stale K/V beyond the prompt) is identical
    assert torch.equal(generator.generate(ids, 16), reference)


def test_refuses_features_it_does_not_implement():
    with pytest.raises(MinitronError, match=r"does not support LayerNorm, a non-gated MLP, .*"
                                            r"partial rotary embeddings \(nemotron\); use --backend hf"):
        EngineWeights(tiny_model("nemotron"), 40)
    mistral = tiny_model("mistral")
    mistral.config.sliding_window = 16
    with pytest.raises(MinitronError, match="sliding window 16"):
        EngineWeights(mistral, 40)


@pytest.mark.parametrize("bias, names", [("attention_bias", "o_proj"),
                                         ("mlp_bias", "gate_proj, up_proj, down_proj")])
def test_refuses_biases_it_would_drop(bias, names):
    with pytest.raises(MinitronError, match=f"no {names} biases"):
        EngineWeights(tiny_model("llama", **{bias: True}), 40)


def test_refuses_generation_past_its_length():
    generator = StaticGenerator(EngineWeights(tiny_model("llama"), 20), batch=1, max_len=20)
    with pytest.raises(ValueError, match="exceed"):
        generator.generate(tiny_batch(batch=1, seq=12), 9)
