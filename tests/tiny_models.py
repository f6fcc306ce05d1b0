"""Tiny random models of every supported family, built from configs in code (no assets)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GptOssConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    NemotronConfig,
    Olmo2Config,
    OlmoeConfig,
    Phi3Config,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

_COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
               num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)


def tiny_config(family: str, **overrides):
    """A 4-layer, 48-wide config with 6 query heads over 2 KV groups (GQA)."""
    kw = dict(_COMMON, **overrides)
    if family == "llama":
        return LlamaConfig(**kw, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                  "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 64})
    if family == "llama_tied":
        return LlamaConfig(**kw, tie_word_embeddings=True)
    if family == "mistral":
        return MistralConfig(**kw, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**kw)
    if family == "qwen3":
        return Qwen3Config(**kw, head_dim=16)
    if family == "phi3":
        return Phi3Config(**kw, pad_token_id=0)
    if family == "nemotron":
        return NemotronConfig(**kw, head_dim=8, partial_rotary_factor=0.5)
    if family == "gemma2":  # tied; a window shorter than the test sequences; soft-capped
        return Gemma2Config(**kw, head_dim=8, query_pre_attn_scalar=12, sliding_window=6,
                            attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    if family == "gemma3":  # tied; local layers 0 and 2 with their own rope base
        return Gemma3TextConfig(**kw, head_dim=8, query_pre_attn_scalar=12, sliding_window=6,
                                layer_types=["sliding_attention", "full_attention"] * 2)
    if family == "olmo2":
        return Olmo2Config(**kw)
    if family == "qwen3_moe":  # 6 experts of width 24, top-2 unnormalised; layer 1 dense (80)
        return Qwen3MoeConfig(**kw, head_dim=16, num_experts=6, num_experts_per_tok=2,
                              moe_intermediate_size=24, mlp_only_layers=[1])
    if family == "mixtral":  # 6 experts of width 24 (intermediate_size), top-2 renormalised
        return MixtralConfig(**dict(kw, intermediate_size=24), num_local_experts=6,
                             num_experts_per_tok=2, sliding_window=None)
    if family == "olmoe":  # 6 experts of width 24, top-2 unnormalised; projection q/k norms
        return OlmoeConfig(**dict(kw, intermediate_size=24), num_experts=6, num_experts_per_tok=2)
    if family == "qwen2_moe":  # 6 experts of width 24, top-2; a shared expert of width 32;
        # q/k/v biases; layer 1 dense (80)
        return Qwen2MoeConfig(**{"mlp_only_layers": [1], **kw}, num_experts=6,
                              num_experts_per_tok=2, moe_intermediate_size=24,
                              shared_expert_intermediate_size=32)
    if family == "gpt_oss":  # 6 experts of width 24, top-2; sinks; biases; sliding layers 0 and
        # 2 with a window shorter than the test sequences; a SwiGLU limit the activations reach
        rope = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0, "beta_fast": 32.0,
                "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 64}
        return GptOssConfig(**{**_COMMON, "intermediate_size": 24, "head_dim": 16,
                               "num_local_experts": 6, "num_experts_per_tok": 2,
                               "sliding_window": 6, "swiglu_limit": 0.1,
                               "rope_parameters": rope, **overrides})
    raise KeyError(family)


FAMILIES = ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "phi3", "nemotron", "gemma2",
            "gemma3", "olmo2"]
#: Mixture-of-experts families (their own tests: tests/test_moe*.py).
MOE_FAMILIES = ["qwen3_moe", "mixtral", "olmoe"]
#: MoE families with a shared expert or biased, clamped experts (tests/test_moe_families.py).
MOE_EXTRA_FAMILIES = ["qwen2_moe", "gpt_oss"]


def tiny_model(family: str, seed: int = 0, **overrides):
    """A float32 eval-mode model with random weights; norms and biases randomized too."""
    return random_model(tiny_config(family, **overrides), seed, attn_implementation="eager")


def random_model(config, seed: int = 0, **kwargs):
    """An eval-mode model of ``config`` with seeded random weights, norms and biases too
    (``kwargs`` go to ``from_config``)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_batch(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, _COMMON["vocab_size"], (batch, seq), generator=g)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Cache-free forward (references with skipped layers keep their original layer_idx)."""
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def char_tokenizer():
    """A 97-symbol character-level tokenizer matching the tiny models' vocabulary."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(32, 127):
        if len(vocab) < _COMMON["vocab_size"]:
            vocab[chr(i)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def save_tiny_checkpoint(family: str, path, seed: int = 0, **overrides):
    """A tiny model plus tokenizer saved as a stock Hugging Face checkpoint directory."""
    model = tiny_model(family, seed=seed, **overrides)
    model.save_pretrained(str(path))
    char_tokenizer().save_pretrained(str(path))
    return model


CALIB_TEXT = "\n".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog while pruning neurons {i * 7 % 13}."
    for i in range(200))


def save_distill_pair(family: str, root, hidden: int | None = None):
    """``root/teacher`` (a tiny checkpoint), ``root/student`` (it pruned to layers 0, 1, 3 and
    40 MLP neurons, and to ``hidden`` embedding channels when given, with the teacher's
    tokenizer) and ``root/text.txt``; returns ``root``."""
    from minitron_deploy.core.shape import ModelShape
    from minitron_deploy.pruning.trim import KeepPlan, trim_model

    save_tiny_checkpoint(family, root / "teacher")
    student = tiny_model(family)
    plan = KeepPlan.keep_all(ModelShape.from_config(student.config))
    plan.layers = [0, 1, 3]
    if hidden is not None:
        plan.hidden = torch.arange(hidden)
    plan.mlp = {i: torch.arange(40) for i in plan.layers}
    trim_model(student, plan)
    student.save_pretrained(str(root / "student"))
    for f in (root / "teacher").glob("tokenizer*"):
        (root / "student" / f.name).write_bytes(f.read_bytes())
    (root / "text.txt").write_text(CALIB_TEXT)
    return root
