"""GGUF export: files transformers' GGUF loader reads back into the same (block-quantized) model
and tokenizer; refusals leave nothing behind."""

import copy

import gguf
import numpy as np
import pytest
import torch
from tiny_models import CALIB_TEXT, char_tokenizer, logits, tiny_batch, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.quantize.gguf import write_gguf

# rows of 64 and 96 are whole 32-value blocks; 80 is not (ffn_down's rows then stay F16)
SHAPE = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2, vocab_size=320)
Q = gguf.GGMLQuantizationType
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama-3's split keeps "'VE" and "(pruned" whole, GPT-2's does not: merges across them tell
SPLIT_TEXT = "WE'VE SEEN IT'S (pruned) {distilled} 2024 [quantized]\n\n"
SENTENCE = "The quick brown fox, 1234 pruned neurons!\nWE'VE (pruned) {distilled} [quantized]."


def bpe_tokenizer(vocab_size: int = SHAPE["vocab_size"]):
    """A Llama-3-style byte-level BPE trained on the calibration text; BOS is added."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(CALIB_TEXT.splitlines() + [SPLIT_TEXT] * 50, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1",
        special_tokens=[("<|begin_of_text|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>")


def tiny(family: str, **overrides):
    return tiny_model(family, **{**SHAPE, "bos_token_id": 0, "eos_token_id": 1, **overrides})


def round_tripped(model, types: dict[str, Q]):
    """A copy whose matrices went through the given GGML type and back."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 2:
                data = gguf.quants.quantize(p.numpy(), types[name])
                p.copy_(torch.from_numpy(gguf.quants.dequantize(data, types[name])))
    return ref


def file_types(path) -> dict[str, Q]:
    return {t.name: Q(t.tensor_type) for t in gguf.GGUFReader(path).tensors}


def load(out):
    return AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf",
                                                attn_implementation="eager").eval()


def check_logits(model, out, types):
    loaded = load(out)
    ids = tiny_batch() % SHAPE["vocab_size"]
    got, want = logits(loaded, ids), logits(round_tripped(model, types), ids)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    # the file really holds quantized weights: the unquantized model answers differently
    assert (got - logits(model, ids)).abs().max() > 1e-4
    return loaded


def test_q8_0_tied_llama_reloads_with_the_same_logits_and_tokenizer(tmp_path):
    model, tok = tiny("llama_tied"), bpe_tokenizer()
    write_gguf(model, tok, tmp_path, "gguf-q8_0")
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
    types = file_types(tmp_path / "model.gguf")
    assert "output.weight" not in types  # tied: llama.cpp reads the embedding
    assert {n: t for n, t in types.items() if t != Q.Q8_0} == {
        "output_norm.weight": Q.F32, **{f"blk.{i}.{n}_norm.weight": Q.F32
                                        for i in range(2) for n in ("attn", "ffn")}}
    check_logits(model, tmp_path, dict.fromkeys(dict(model.named_parameters()), Q.Q8_0))
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    ids = tok(SENTENCE)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) < len(SENTENCE) - 10  # BOS + real merges
    assert loaded_tok(SENTENCE)["input_ids"] == ids
    assert loaded_tok.decode(ids, skip_special_tokens=True) == SENTENCE


def test_q4_0_keeps_the_output_projection_in_q8_0_and_odd_rows_in_f16(tmp_path):
    model = tiny("mistral", intermediate_size=80)
    write_gguf(model, bpe_tokenizer(), tmp_path, "gguf-q4_0")
    types = file_types(tmp_path / "model.gguf")
    assert types["output.weight"] == Q.Q8_0 and types["token_embd.weight"] == Q.Q4_0
    assert types["blk.0.ffn_down.weight"] == Q.F16 and types["blk.1.ffn_up.weight"] == Q.Q4_0
    assert types["blk.1.attn_k.weight"] == Q.Q4_0 and types["blk.0.attn_norm.weight"] == Q.F32
    expected = {n: Q.Q8_0 if n == "lm_head.weight" else Q.F16 if "down_proj" in n else Q.Q4_0
                for n, _ in model.named_parameters()}
    loaded = check_logits(model, tmp_path, expected)
    assert loaded.config.intermediate_size == 80 and loaded.config.num_key_value_heads == 2


def test_qwen2_keeps_its_biases_in_f32(tmp_path):
    model = tiny("qwen2")
    write_gguf(model, bpe_tokenizer(), tmp_path, "gguf-q8_0")
    types = file_types(tmp_path / "model.gguf")
    assert types["blk.0.attn_q.bias"] == types["blk.1.attn_v.bias"] == Q.F32
    check_logits(model, tmp_path, dict.fromkeys(dict(model.named_parameters()), Q.Q8_0))


def test_llama3_rope_scaling_becomes_llama_cpps_rope_freqs(tmp_path):
    model = tiny("llama")  # rope_type llama3, factor 8 over an original 64-token context
    write_gguf(model, bpe_tokenizer(), tmp_path, "gguf-q8_0")
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    factors = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    base = 1.0 / 500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    # llama.cpp divides the base frequencies by these factors; transformers stores the quotient
    want = base / model.model.rotary_emb.inv_freq
    assert np.allclose(factors, want.numpy(), rtol=1e-5) and factors.max() == 8.0
    assert factors.min() == 1.0
    field = reader.get_field("llama.rope.dimension_count")
    assert field.parts[field.data[0]][0] == 16


def test_unsupported_families_and_tokenizers_are_refused_and_write_nothing(tmp_path):
    with pytest.raises(MinitronError, match="supports the llama, mistral, qwen2 families; "
                                            "this model is gemma2"):
        write_gguf(tiny_model("gemma2"), bpe_tokenizer(), tmp_path, "gguf-q8_0")
    with pytest.raises(MinitronError, match="byte-level BPE"):
        write_gguf(tiny("llama_tied", vocab_size=97), char_tokenizer(), tmp_path, "gguf-q8_0")
    windowed = tiny("mistral")
    windowed.config.sliding_window = 8
    with pytest.raises(MinitronError, match="8-token sliding window"):
        write_gguf(windowed, bpe_tokenizer(), tmp_path, "gguf-q8_0")
    dynamic = tiny("llama_tied")
    dynamic.config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(MinitronError, match="this model uses dynamic"):
        write_gguf(dynamic, bpe_tokenizer(), tmp_path, "gguf-q8_0")
    with pytest.raises(MinitronError, match="gguf-q8_0, gguf-q4_0"):
        write_gguf(tiny("llama_tied"), bpe_tokenizer(), tmp_path, "gguf-q2_k")
    assert list(tmp_path.iterdir()) == []
