"""What the Gemma 2, Gemma 3 and OLMo 2 adapters add beyond the exactness every family gets in
test_trim: the embedding scale survives a smaller hidden size (and a reload), (1 + w) norms
are rescaled and masked through their offset, whole-projection q/k norms are sliced with the
heads, and consumers refuse what they do not implement in one line (the fast path's OLMo 2
tokens are in test_bench_engine)."""

import copy

import pytest
import torch
from masking import masked_reference
from test_trim import random_plan
from tiny_models import logits, tiny_batch, tiny_model
from transformers import AutoModelForCausalLM

from minitron_deploy.arch import get_adapter
from minitron_deploy.bench.engine import EngineWeights
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.export.runner import TrtllmCheckpoint
from minitron_deploy.export.trtllm import convert, write_trtllm
from minitron_deploy.pruning.trim import _expand_heads, trim_model


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
@pytest.mark.parametrize("tied", [True, False])
def test_embedding_scale_survives_hidden_trimming_and_reload(family, tied, tmp_path):
    model = tiny_model(family, tie_word_embeddings=tied)
    plan = random_plan(model, hidden=32, per_group=2)  # transformers wants heads | hidden
    x = tiny_batch()
    reference = logits(masked_reference(model, plan), x)
    trimmed = trim_model(copy.deepcopy(model), plan, rescale_norms=False)
    embed = trimmed.model.embed_tokens
    assert embed.embed_scale.item() == pytest.approx(32 ** 0.5)  # what a reload computes
    torch.testing.assert_close(embed.weight * embed.embed_scale,  # sqrt(48) in effect
                               model.model.embed_tokens.weight[:, plan.hidden] * 48 ** 0.5)
    assert (trimmed.lm_head.weight is embed.weight) == tied
    torch.testing.assert_close(logits(trimmed, x), reference, atol=1e-5, rtol=1e-4)
    trimmed.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(logits(reloaded, x), logits(trimmed, x))


def test_offset_norm_rescale_scales_one_plus_w():
    model = tiny_model("gemma2")
    plan = random_plan(model, hidden=27)
    norm = model.model.layers[0].pre_feedforward_layernorm
    kept = 1.0 + norm.weight.data[plan.hidden]
    trimmed = trim_model(copy.deepcopy(model), plan, rescale_norms=True)
    rescaled = 1.0 + trimmed.model.layers[0].pre_feedforward_layernorm.weight.data
    torch.testing.assert_close(rescaled, kept * (48 / 27) ** 0.5)


def test_depth_pruning_keeps_each_layers_attention_type(tmp_path):
    model = tiny_model("gemma3")
    trimmed = trim_model(copy.deepcopy(model), random_plan(model, layers=[1, 2]))
    assert trimmed.config.layer_types == ["full_attention", "sliding_attention"]
    trimmed.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = tiny_batch(seq=20)
    assert torch.equal(logits(reloaded, x), logits(trimmed, x))


def test_olmo2_projection_norms_are_sliced_with_the_heads(tmp_path):
    model = tiny_model("olmo2")
    plan = random_plan(model, hidden=30, per_group=2, kv=1)
    trimmed = trim_model(copy.deepcopy(model), plan)
    for new, old in enumerate(plan.layers):
        source, attn = model.model.layers[old].self_attn, trimmed.model.layers[new].self_attn
        assert torch.equal(attn.q_norm.weight, source.q_norm.weight[_expand_heads(plan.heads[old], 8)])
        assert torch.equal(attn.k_norm.weight,
                           source.k_norm.weight[_expand_heads(plan.kv_heads[old], 8)])
    trimmed.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert torch.equal(logits(reloaded, tiny_batch()), logits(trimmed, tiny_batch()))


@pytest.mark.parametrize("family, reason", [
    ("gemma2", r"\(1 \+ w\) RMSNorm, norms before and after attention and MLP, an activation "
               r"other than SiLU, embeddings scaled by sqrt\(hidden size\), attention scaled by "
               r"query_pre_attn_scalar, logit soft-capping \(gemma2\)"),
    ("gemma3", r"per-head q/k norms"),  # supported: not in the list
])
def test_fast_path_refuses_by_feature_in_one_line(family, reason):
    with pytest.raises(MinitronError) as err:
        EngineWeights(tiny_model(family), 40)
    message = str(err.value)
    assert "\n" not in message and message.startswith("the torch fast path does not support ")
    assert message.endswith("; use --backend hf")
    if family == "gemma3":
        assert "local_rope" not in message and "separate rope bases" in message
        assert reason not in message
    else:
        assert __import__("re").search(reason, message)


def test_trtllm_export_refused_where_tensorrt_llm_has_no_architecture():
    with pytest.raises(MinitronError, match=r"^TensorRT-LLM export does not support olmo2: "
                                            r"TensorRT-LLM has no OLMo 2 checkpoint architecture"):
        convert(tiny_model("olmo2"), "float32")


@pytest.mark.parametrize("family, field", [("gemma2", "_sliding_window_pattern"),
                                           ("gemma2", "final_logit_softcapping"),
                                           ("gemma2", "attn_logit_softcapping"),
                                           ("gemma3", "rope_local_base_freq"),
                                           ("gemma3", "query_pre_attn_scalar")])
def test_gemma_trtllm_fields_change_the_logits(family, field, tmp_path):
    """The reference runner honours each Gemma field, so the round trips in test_export_trtllm
    (sequences longer than the sliding window) prove them."""
    model = tiny_model(family, initializer_range=0.2)  # attention scores that reach the cap
    write_trtllm(model, tmp_path, "float32")
    ckpt = TrtllmCheckpoint.load(tmp_path)
    ids = tiny_batch(2, 20)
    torch.testing.assert_close(ckpt.logits(ids), logits(model, ids), atol=1e-5, rtol=0)
    ckpt.config[field] = None
    assert (ckpt.logits(ids) - logits(model, ids)).abs().max() > 1e-4


def test_trtllm_refuses_layer_types_no_pattern_repeats():
    model = tiny_model("gemma2")
    trimmed = trim_model(model, random_plan(model, layers=[0, 1, 3]))  # sliding, full, full
    with pytest.raises(MinitronError, match="^TensorRT-LLM repeats one sliding/full pattern over "
                                            "the layers, and these layer types repeat none"):
        convert(trimmed, "float32")


def test_unsupported_architecture_lists_what_each_family_supports():
    with pytest.raises(MinitronError) as err:
        get_adapter(type("Config", (), {"model_type": "gpt2"})())
    message = str(err.value)
    assert "\n" not in message
    assert "olmo2: prune, export hf/onnx, fast path, vllm" in message
    assert "gemma2: prune, export hf/onnx/trtllm, vllm" in message
    assert "qwen3: prune, export hf/onnx/trtllm, fast path, vllm" in message


def test_vllm_overrides_come_from_the_adapter():
    """vLLM's Qwen2 derives head_dim from the hidden size: a width-pruned Qwen2 loads as Llama
    with q/k/v biases; Qwen3 and the new families read head_dim and need nothing."""
    from minitron_deploy.serve.vllm_env import vllm_overrides

    qwen2 = tiny_model("qwen2")
    assert vllm_overrides(qwen2.config) is None
    pruned = trim_model(qwen2, random_plan(qwen2, hidden=36))
    assert vllm_overrides(pruned.config) == {"architectures": ["LlamaForCausalLM"],
                                             "qkv_bias": True, "attention_bias": False}
    pruned.config.use_sliding_window = True
    with pytest.raises(MinitronError, match="sliding-window attention"):
        vllm_overrides(pruned.config)
    for family in ("qwen3", "gemma2", "gemma3", "olmo2"):
        model = tiny_model(family)
        assert vllm_overrides(trim_model(model, random_plan(model, hidden=36)).config) is None


def test_trtllm_refusal_comes_before_loading_the_weights(tmp_path, monkeypatch):
    from tiny_models import save_tiny_checkpoint

    from minitron_deploy.export import api

    save_tiny_checkpoint("olmo2", tmp_path / "olmo2")
    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(MinitronError, match="does not support olmo2"):
        api.export(tmp_path / "olmo2", tmp_path / "out", format="trtllm")
    assert not (tmp_path / "out").exists()
