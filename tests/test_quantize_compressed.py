"""Compressed-tensors checkpoints (minitron_deploy.quantize.compressed): transformers loads what
is written, and its logits equal a quantize-dequantize reference computed here in torch; weights
shrink on disk as the scheme says; lm_head and embeddings stay as they were."""

import copy
import json
import sys

import pytest
import torch
from safetensors import safe_open
from tiny_models import char_tokenizer, tiny_batch, tiny_model
from transformers import AutoModelForCausalLM

pytest.importorskip("compressed_tensors")

from minitron_deploy.core.errors import MinitronError  # noqa: E402
from minitron_deploy.quantize.compressed import write_compressed  # noqa: E402

#: 128 wide (fp8-block's and w4a16's 128 columns), MLP 256, 4 heads of 32 over 2 KV groups: k/v
#: have 64 rows, half a 128-row block.
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2)
FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json"}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def qdq_int8(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8 with compressed-tensors' (and vLLM's loader's) scale amax / 127.5 (half
    the range -128..127), rounded half to even and clamped."""
    scale = amax / 127.5
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def qdq_fp8(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 with scale amax / 448."""
    scale = amax / FP8_MAX
    return torch.clamp(x / scale, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def per_row(x, qdq):
    """One scale per row (weight output channel, activation token)."""
    return qdq(x, x.abs().amax(-1, keepdim=True))


def per_group(x, qdq, size=128):
    """One scale per group of ``size`` along the last dimension."""
    g = x.unflatten(-1, (-1, size))
    return qdq(g, g.abs().amax(-1, keepdim=True)).flatten(-2)


def per_block(w, qdq, size=128):
    """One scale per size x size block; a partial last row of blocks has its own."""
    rows = w.shape[0]
    pad = torch.nn.functional.pad(w, (0, 0, 0, -rows % size))
    b = pad.unflatten(0, (-1, size)).unflatten(-1, (-1, size))
    return qdq(b, b.abs().amax((1, 3), keepdim=True)).flatten(2, 3).flatten(0, 1)[:rows]


#: scheme -> (weight qdq, activation qdq, stored weight dtype)
REFERENCE = {
    "int8-w8a8": (lambda w: per_row(w, qdq_int8), lambda x: per_row(x, qdq_int8), torch.int8),
    "fp8": (lambda w: per_row(w, qdq_fp8), lambda x: per_row(x, qdq_fp8), torch.float8_e4m3fn),
    "fp8-block": (lambda w: per_block(w, qdq_fp8), lambda x: per_group(x, qdq_fp8),
                  torch.float8_e4m3fn),
}


def reference_model(model, scheme: str, activations: bool = True):
    """A copy of ``model`` whose linears but lm_head run on quantize-dequantized weights and
    (unless ``activations`` is False) activations quantized at run time, as ``scheme`` says."""
    ref = copy.deepcopy(model)
    weight_qdq, act_qdq, _ = REFERENCE[scheme]
    with torch.no_grad():
        for module in quantized_linears(ref).values():
            module.weight.copy_(weight_qdq(module.weight))
            if activations:
                module.register_forward_pre_hook(lambda m, args: (act_qdq(args[0]),))
    return ref


def quantized_linears(model) -> dict:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def written(model, scheme, tmp_path, calib=()):
    out = tmp_path / scheme
    out.mkdir()
    write_compressed(model, char_tokenizer(), out, scheme, list(calib))
    return out


def tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("scheme,family", [("int8-w8a8", "qwen2"), ("fp8", "llama_tied"),
                                           ("fp8-block", "llama")])
def test_transformers_loads_what_the_reference_computes(scheme, family, tmp_path):
    source = tiny_model(family, **SHAPE)
    source_state = {k: v.clone() for k, v in source.state_dict().items()}
    ids = tiny_batch()
    reference = reference_model(source, scheme)
    expected, unquantized = logits(reference, ids), logits(source, ids)
    weight_only = logits(reference_model(source, scheme, activations=False), ids)
    out = written(source, scheme, tmp_path)

    assert {p.name for p in out.iterdir()} == FILES
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors" and qconfig["ignore"] == ["lm_head"]
    assert qconfig["quantization_status"] == "compressed"
    loaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    got = logits(loaded, ids)
    # The weights transformers decompresses are the reference's, bit for bit.
    mine = quantized_linears(reference)
    assert all(torch.equal(m.weight, mine[n].weight) for n, m in quantized_linears(loaded).items())
    # With eager attention on both sides the arithmetic is the same fp32 in the same order, so
    # the logits agree to the bit (0.0 measured); 1e-6 leaves room for another CPU's kernels.
    # (SDPA's summation order moves a rare activation on a rounding boundary by one level: 8e-4.)
    diff = (got - expected).abs()
    assert diff.max() < 1e-6
    # activations are quantized (weights alone leave logits 1e-3 to 7e-3 away on average)
    assert (got - weight_only).abs().mean() > 1e-4
    assert (got - unquantized).abs().mean() > (got - weight_only).abs().mean()
    # the model written runs, in memory, as the checkpoint does
    assert (logits(source, ids) - got).abs().max() < 1e-5

    stored, dtype = tensors(out), REFERENCE[scheme][2]
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        if name in stored:  # a tied lm_head is stored once, as the embedding
            assert stored[name].dtype == torch.float32 and torch.equal(stored[name],
                                                                       source_state[name])
    assert ("lm_head.weight" in stored) == (family != "llama_tied")
    quantized = [k for k in stored if k.endswith(".weight") and k.split(".")[-2] in LINEARS]
    assert len(quantized) == len(LINEARS) * SHAPE["num_hidden_layers"]
    for name in quantized:
        assert stored[name].dtype == dtype and stored[name].shape == source_state[name].shape
    # 1 byte per quantized weight instead of 4; scales, norms, embeddings and lm_head as before
    linear_params = sum(stored[k].numel() for k in quantized)
    before = sum(v.numel() * 4 for k, v in source_state.items()
                 if not (family == "llama_tied" and k == "lm_head.weight"))
    after = sum(t.numel() * t.element_size() for t in stored.values())
    scales = sum(t.numel() * 4 for k, t in stored.items() if k.endswith("weight_scale"))
    assert after == before - 3 * linear_params + scales
    assert (out / "model.safetensors").stat().st_size < after + 16_384  # + its JSON header
    assert scales < linear_params / 30


def test_w4a16_runs_gptq_when_llm_compressor_is_there(tmp_path):
    pytest.importorskip("llmcompressor")
    source = tiny_model("llama", **SHAPE)
    weights = {k: v.clone() for k, v in source.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    calib = [torch.randint(3, 97, (4, 32), generator=g) for _ in range(2)]
    ids = tiny_batch()
    out = written(source, "w4a16", tmp_path, calib)

    assert {p.name for p in out.iterdir()} == FILES
    loaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert (logits(loaded, ids) - logits(source, ids)).abs().max() < 1e-5
    stored = tensors(out)
    assert torch.equal(stored["lm_head.weight"], weights["lm_head.weight"])
    packed = stored["model.layers.0.mlp.down_proj.weight_packed"]
    assert packed.dtype == torch.int32 and packed.shape == (128, 256 // 8)  # 8 int4 per int32
    # every group of 128 is its scale times integers in -8..7, and GPTQ's error feedback
    # rounds some weights away from their nearest grid point
    w = loaded.model.layers[0].mlp.down_proj.weight.detach()
    scale = stored["model.layers.0.mlp.down_proj.weight_scale"].repeat_interleave(128, -1)
    q = (w / scale).round()
    assert torch.allclose(w, q * scale) and q.min() >= -8 and q.max() <= 7
    rtn = torch.clamp((weights["model.layers.0.mlp.down_proj.weight"] / scale).round(), -8, 7)
    assert (q != rtn).float().mean() > 0.01


def test_w4a16_without_llm_compressor_is_refused_not_rounded(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llmcompressor", None)
    model = tiny_model("llama", **SHAPE)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(MinitronError, match="w4a16 needs GPTQ from llm-compressor") as exc:
        written(model, "w4a16", tmp_path, [tiny_batch()])
    assert "\n" not in str(exc.value)
    assert not any((tmp_path / "w4a16").iterdir())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("scheme,match", [("int4", "no scheme 'int4'; choose from int8-w8a8"),
                                          ("fp8-block", "divisible by 128; model.layers.0")])
def test_bad_requests_are_refused_before_anything_is_written(scheme, match, tmp_path):
    model = tiny_model("llama")  # 48 wide: no 128-column blocks
    with pytest.raises(MinitronError, match=match):
        written(model, scheme, tmp_path)
    assert not any((tmp_path / scheme).iterdir())
    assert not any(hasattr(m, "quantization_scheme") for m in model.modules())


def test_vllm_serves_the_int8_checkpoint(tmp_path):
    """vLLM's CPU build (.venv-vllm, from .ci/setup) loads the INT8 folder and generates; its
    INT8 kernels round activations their own way (scale amax / 127, integer accumulation), so
    the chosen tokens' logprobs agree with transformers' only to ~0.03 (measured), not bit for
    bit, and a tiny random model's near-ties may then pick other tokens."""
    from minitron_deploy.serve.parity import greedy_parity
    from minitron_deploy.serve.vllm_env import vllm_python

    try:
        vllm_python()
    except MinitronError as exc:
        pytest.skip(str(exc))
    out = written(tiny_model("llama", **SHAPE), "int8-w8a8", tmp_path)
    prompts = [char_tokenizer()(t)["input_ids"] for t in ("The quick brown fox", "a")]
    results, failed, engine = greedy_parity([str(out)], prompts, new_tokens=8, threads=1)
    assert not failed and engine["device"] == "cpu"
    assert [len(p.vllm_tokens) for p in results] == [8, 8]
    assert all(p.vllm_tokens[0] == p.hf_tokens[0] for p in results)
    assert max(p.max_logprob_gap for p in results) < 0.1
