"""GGUF files for llama.cpp: Q8_0 or Q4_0 weights, the config as llama.cpp's metadata and the
byte-level BPE tokenizer, laid out the way llama.cpp's own Hugging Face converter lays them out.

Llama (and Mistral, which llama.cpp runs as ``llama``) and Qwen2 are written. Norms, biases and
other 1-D tensors stay F32; a matrix whose rows are not whole 32-value blocks stays F16. Q4_0
keeps the output projection (the embedding when tied) in Q8_0, as llama.cpp's quantizer keeps it
in a higher-precision type (its Q6_K, which the ``gguf`` package cannot write).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import gguf
import numpy as np

from minitron_deploy.core.errors import MinitronError

_QTYPES = {
    "gguf-q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "gguf-q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}
# HF model_type -> llama.cpp architecture; llama.cpp runs Mistral as llama
_ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA,
          "qwen2": gguf.MODEL_ARCH.QWEN2}
_ROPE_TYPES = ("default", "linear", "yarn", "llama3")
# tokenizer.json pre-tokenizers -> llama.cpp's name for the same split (tokenizer.ggml.pre)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PRE = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}
GGUF_FILE = "model.gguf"


def write_gguf(model, tokenizer, out: Path, scheme: str) -> None:
    """Write ``out/model.gguf``: ``model`` (a transformers causal LM) quantized to ``scheme``
    ("gguf-q8_0" or "gguf-q4_0") with its ``tokenizer``, for llama.cpp. Every refusal comes
    before anything is written; ``out`` is the caller's temp folder (``quantize`` renames it
    only on success)."""
    config = model.config
    if scheme not in _QTYPES:
        raise MinitronError(f"unknown GGUF scheme {scheme!r}; choose one of {', '.join(_QTYPES)}")
    if config.model_type not in _ARCHS:
        raise MinitronError(f"GGUF export supports the {', '.join(sorted(_ARCHS))} families; "
                            f"this model is {config.model_type}")
    _check_attention(config)
    arch = _ARCHS[config.model_type]
    qtype, ftype = _QTYPES[scheme]
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    _add_tokenizer(writer, tokenizer, config)  # first: it may refuse the tokenizer
    _add_metadata(writer, config, arch, ftype, Path(config.name_or_path or "").name
                  or type(model).__name__)
    _add_tensors(writer, model, arch, qtype)
    writer.write_header_to_file(path=Path(out) / GGUF_FILE)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _check_attention(config) -> None:
    """Refuse what llama.cpp's llama/qwen2 graphs would silently compute differently."""
    window = getattr(config, "sliding_window", None)
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        window = None
    if window is not None and window < config.max_position_embeddings:
        raise MinitronError(f"GGUF export cannot keep the {window}-token sliding window: "
                            "llama.cpp attends over the whole context for this family")
    rope_type = _rope(config).get("rope_type", "default")
    if rope_type not in _ROPE_TYPES:
        raise MinitronError(f"GGUF export supports rope scaling {', '.join(_ROPE_TYPES)}; "
                            f"this model uses {rope_type}")


def _rope(config) -> dict:
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
                or {})


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# ---- tensors ----

def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for the llama architecture's Q/K rows (transformers' GGUF loader
    undoes it); it moves whole rows, so it commutes with the row-wise block quantization."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _gguf_tensors(model, arch) -> dict[str, np.ndarray]:
    """The state dict under llama.cpp's names, Q/K permuted for the llama architecture."""
    config = model.config
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    tensors = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":  # llama.cpp reads the embedding instead
            continue
        found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in gguf.MODEL_TENSORS[arch]:
            raise MinitronError(f"GGUF export has no llama.cpp tensor for {hf_name}")
        data = tensor.detach().float().cpu().numpy()
        if arch == gguf.MODEL_ARCH.LLAMA and ".self_attn.q_proj." in hf_name:
            data = _permute(data, config.num_attention_heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and ".self_attn.k_proj." in hf_name:
            data = _permute(data, config.num_key_value_heads)
        tensors[found[1]] = data
    rope_freqs = _llama3_rope_factors(config)
    if rope_freqs is not None:
        tensors[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = rope_freqs
    return tensors


def _tensor_type(name: str, data: np.ndarray, qtype, output: str):
    """llama.cpp's choice: F32 for 1-D tensors and norms, the scheme's type for matrices, Q8_0
    for Q4_0's output projection."""
    if data.ndim <= 1 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q4_0 and name == output:
        return gguf.GGMLQuantizationType.Q8_0
    return qtype


def _add_tensors(writer, model, arch, qtype) -> None:
    tensors = _gguf_tensors(model, arch)
    output = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    for name, data in tensors.items():
        dtype = _tensor_type(name, data, qtype, output)
        try:
            packed = gguf.quants.quantize(data, dtype)
        except gguf.QuantError:  # rows that are not whole blocks: llama.cpp keeps them F16
            dtype = gguf.GGMLQuantizationType.F16
            packed = gguf.quants.quantize(data, dtype)
        writer.add_tensor(name, packed, raw_dtype=dtype)


def _llama3_rope_factors(config) -> np.ndarray | None:
    """Llama 3.1's frequency-dependent rope scaling as llama.cpp's ``rope_freqs`` tensor."""
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return None
    dim = _head_dim(config)
    exponents = np.arange(0, dim, 2, dtype=np.float32) / dim
    freqs = 1.0 / rope.get("rope_theta", 10000.0) ** exponents
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings",
                           getattr(config, "original_max_position_embeddings", 8192))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


# ---- metadata ----

def _add_metadata(writer, config, arch, ftype, name: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    _add_rope(writer, config)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_file_type(ftype)
    if arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(_head_dim(config))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_rope(writer, config) -> None:
    rope = _rope(config)
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is not None:
        writer.add_rope_freq_base(theta)
    rope_type, factor = rope.get("rope_type"), rope.get("factor")
    if rope_type == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for key, add in (("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if rope.get(key) is not None:
                add(rope[key])


# ---- tokenizer ----

def _pre_tokenizer(spec: dict | None) -> str | None:
    """llama.cpp's name for a byte-level BPE tokenizer's split, or None when it has none."""
    steps = (spec or {}).get("pretokenizers", [spec or {}])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") \
            and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        return _SPLIT_PRE.get(steps[0].get("pattern", {}).get("Regex"))
    return None


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, padded to the model's vocabulary, with llama.cpp's token types (added
    tokens spelled ``<|...|>`` count as control tokens, as llama.cpp counts them)."""
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise MinitronError(f"the tokenizer has ids up to {max(vocab.values())} but the model "
                            f"embeds only {vocab_size} tokens")
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].special or (by_id[i].startswith("<|") and by_id[i].endswith("|>"))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _add_tokenizer(writer, tokenizer, config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        config.to_json_file(str(Path(tmp) / "config.json"))
        spec_file = Path(tmp) / "tokenizer.json"
        spec = json.loads(spec_file.read_text(encoding="utf-8")) if spec_file.is_file() else {}
        model_spec = spec.get("model", {})
        pre = _pre_tokenizer(spec.get("pre_tokenizer")) if model_spec.get("type") == "BPE" \
            and not model_spec.get("byte_fallback") else None
        if pre is None:
            raise MinitronError("GGUF export supports byte-level BPE tokenizers (Llama 3, "
                                "SmolLM2, Qwen2, GPT-2 style); this tokenizer is not one")
        tokens, types = _vocab(tokenizer, config.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf.SpecialVocab(tmp, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer,
                                                                                  quiet=True)
