"""TensorRT-LLM checkpoints: the pure-torch reference runner reproduces the HF logits for every
family, pruned shapes and tp=2 shards; FP8 stays close to BF16 and matches ModelOpt."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from test_trim import random_plan
from tiny_models import FAMILIES, logits, tiny_batch, tiny_config, tiny_model

from minitron_deploy.arch import get_adapter
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.export.runner import TrtllmCheckpoint
from minitron_deploy.export.shard import merge_tensors, split_tensors
from minitron_deploy.export.trtllm import convert, write_trtllm
from minitron_deploy.pruning.trim import trim_model

IDS = tiny_batch(2, 20)
CALIB = [tiny_batch(4, 16, seed=s) for s in (2, 3)]
#: Families whose adapter has a TensorRT-LLM layout (the others are refused: test_families).
EXPORTABLE = [f for f in FAMILIES if get_adapter(tiny_config(f)).trtllm is not None]


def exported_logits(model, tmp_path, tp=1, dtype="float32", fp8_batches=None):
    tmp_path.mkdir(exist_ok=True)
    write_trtllm(model, tmp_path, dtype, tp, fp8_batches=fp8_batches)
    return TrtllmCheckpoint.load(tmp_path).logits(IDS)


def width_pruned(family):
    model = tiny_model(family)
    return trim_model(model, random_plan(model, hidden=32, ffn=48, per_group=2, kv=2))


def depth_pruned(family):
    model = tiny_model(family)
    return trim_model(model, random_plan(model, layers=[0, 2]))


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("family", EXPORTABLE)
def test_runner_matches_hf_logits(family, tp, tmp_path):
    model = tiny_model(family)
    out = exported_logits(model, tmp_path, tp)
    torch.testing.assert_close(out, logits(model, IDS), atol=1e-5, rtol=0)


@pytest.mark.parametrize("prune", [width_pruned, depth_pruned], ids=["width", "depth"])
@pytest.mark.parametrize("family", EXPORTABLE)
def test_pruned_models_round_trip(family, prune, tmp_path):
    model = prune(family)
    out = exported_logits(model, tmp_path, tp=2)
    torch.testing.assert_close(out, logits(model, IDS), atol=1e-5, rtol=0)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["head_size"] == model.config.head_dim
    assert config["num_hidden_layers"] == model.config.num_hidden_layers


def test_config_carries_rope_and_dtype(tmp_path):
    """What ModelOpt 0.47's exporter drops: rotary_base, llama3 rotary_scaling, bf16 dtype."""
    model = tiny_model("llama")
    write_trtllm(model, tmp_path, "bfloat16")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rotary_base"] == 500000.0
    assert config["rotary_scaling"]["type"] == "llama3"
    assert config["rotary_scaling"]["factor"] == 8.0
    assert config["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(tmp_path / "rank0.safetensors").values()} == {torch.bfloat16}
    out = TrtllmCheckpoint.load(tmp_path).logits(IDS)
    assert (out - logits(model, IDS)).abs().max() < 0.02


def test_rope_fields_change_the_logits(tmp_path):
    """The runner honours rotary_base/rotary_scaling, so dropping them (as ModelOpt does) shows."""
    model = tiny_model("llama")
    write_trtllm(model, tmp_path, "float32")
    ckpt = TrtllmCheckpoint.load(tmp_path)
    ref = ckpt.logits(IDS)
    ckpt.config["rotary_base"], ckpt.config["rotary_scaling"] = 10000.0, None
    assert (ckpt.logits(IDS) - ref).abs().max() > 1e-3


def test_nemotron_partial_rotary_and_layernorm1p(tmp_path):
    model = tiny_model("nemotron")
    config, tensors = convert(model, "float32")
    assert config["rotary_pct"] == 0.5 and config["architecture"] == "GPTForCausalLM"
    norm = model.model.layers[0].input_layernorm
    torch.testing.assert_close(tensors["transformer.layers.0.input_layernorm.weight"],
                               norm.weight.data + 1, atol=0, rtol=0)


def test_tp_shards_split_and_merge_exactly():
    model = tiny_model("phi3")
    config, tensors = convert(model, "float32")
    shards = split_tensors(tensors, config, 2)
    qkv = "transformer.layers.0.attention.qkv.weight"
    assert shards[0][qkv].shape[0] == tensors[qkv].shape[0] // 2
    assert not torch.equal(shards[0][qkv], shards[1][qkv])
    assert shards[0]["lm_head.weight"].shape[0] == 49  # vocab 97 padded to 98
    merged = merge_tensors(shards, config)
    assert merged.keys() == tensors.keys()
    assert all(torch.equal(merged[k], tensors[k]) for k in tensors)


def test_tp_must_divide_heads():
    model = tiny_model("llama")
    config, tensors = convert(model, "float32")
    with pytest.raises(MinitronError, match="does not divide num_key_value_heads=2"):
        split_tensors(tensors, config, 3)


@pytest.mark.parametrize("family", EXPORTABLE)
def test_fp8_checkpoint_stays_close_to_bf16(family, tmp_path):
    model = tiny_model(family)
    bf16 = exported_logits(model, tmp_path / "bf16", dtype="bfloat16")
    fp8 = exported_logits(copy.deepcopy(model), tmp_path / "fp8", dtype="bfloat16",
                          fp8_batches=CALIB)
    weights = load_file(tmp_path / "fp8" / "rank0.safetensors")
    assert weights["transformer.layers.0.mlp.proj.weight"].dtype == torch.float8_e4m3fn
    assert weights["lm_head.weight"].dtype == torch.bfloat16
    rel = (fp8 - bf16).norm() / bf16.norm()
    # quantized for real, and close (measured 0.03-0.08; the tiny Gemmas 0.125 and 0.136)
    assert 1e-3 < rel < (0.16 if family.startswith("gemma") else 0.12)
    assert (fp8.argmax(-1) == bf16.argmax(-1)).float().mean() > 0.75


def test_fp8_runner_equals_modelopt_fake_quant(tmp_path):
    """Phi-3 fuses qkv and gate_up in HF too, so no scale is shared: the exported FP8
    checkpoint computes exactly what ModelOpt's fake-quantized model computes."""
    model = tiny_model("phi3")
    out = exported_logits(model, tmp_path, dtype="float32", fp8_batches=CALIB)
    torch.testing.assert_close(out, logits(model, IDS), atol=1e-5, rtol=0)


def test_fp8_tensors_equal_modelopt_export(tmp_path):
    """Where ModelOpt's TensorRT-LLM exporter covers the family, our FP8 tensors are its own."""
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    from minitron_deploy.export.fp8 import calibrate_fp8

    model = calibrate_fp8(tiny_model("llama"), CALIB)
    _, ours = convert(model, "bfloat16", fp8=True)
    export_tensorrt_llm_checkpoint(model, "llama", dtype=torch.bfloat16, export_dir=tmp_path,
                                   inference_tensor_parallel=1)
    theirs = load_file(tmp_path / "rank0.safetensors")
    assert ours.keys() == theirs.keys()
    for name, t in theirs.items():
        assert ours[name].dtype == t.dtype and torch.equal(ours[name].float(), t.float()), name


def test_non_uniform_layers_refused():
    model = tiny_model("llama")
    mlp = model.model.layers[1].mlp
    mlp.gate_proj.weight.data = mlp.gate_proj.weight.data[:40].clone()
    mlp.up_proj.weight.data = mlp.up_proj.weight.data[:40].clone()
    with pytest.raises(MinitronError, match="layer 1 mlp.fc has a different shape"):
        convert(model, "float32")


def test_mlp_and_attention_biases_are_exported(tmp_path):
    """A Llama with ``mlp_bias`` and ``attention_bias`` (o_proj too): every bias reaches the
    checkpoint under TensorRT-LLM's names and flags, and the runner reproduces the HF logits."""
    model = tiny_model("llama", mlp_bias=True, attention_bias=True)
    assert model.model.layers[0].self_attn.o_proj.bias.abs().min() > 0
    out = exported_logits(model, tmp_path, tp=2)
    torch.testing.assert_close(out, logits(model, IDS), atol=1e-5, rtol=0)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["attn_bias"] is True and config["mlp_bias"] is True
    tensors = TrtllmCheckpoint.load(tmp_path).tensors
    layer = model.model.layers[1]
    for name, hf in [("mlp.fc", layer.mlp.gate_proj), ("mlp.gate", layer.mlp.up_proj),
                     ("mlp.proj", layer.mlp.down_proj), ("attention.dense", layer.self_attn.o_proj)]:
        assert torch.equal(tensors[f"transformer.layers.1.{name}.bias"], hf.bias.data), name


def test_missing_bias_parts_are_zero_where_the_config_wants_a_bias(tmp_path):
    """TensorRT-LLM's Llama gives qkv and dense a bias together: one the HF model lacks is zero."""
    model = tiny_model("llama", attention_bias=True)
    for layer in model.model.layers:
        layer.self_attn.o_proj.bias = None
    config, tensors = convert(model, "float32")
    assert not tensors["transformer.layers.0.attention.dense.bias"].any()
    write_trtllm(model, tmp_path, "float32")
    torch.testing.assert_close(TrtllmCheckpoint.load(tmp_path).logits(IDS), logits(model, IDS),
                               atol=1e-5, rtol=0)


def test_bias_without_a_place_is_refused():
    """TensorRT-LLM's Qwen models have no o_proj bias; dropping it would change the model."""
    with pytest.raises(MinitronError, match=r"^TensorRT-LLM's Qwen3ForCausalLM has no attention "
                                            r"output \(o_proj\) bias"):
        convert(tiny_model("qwen3", attention_bias=True), "float32")
    model = tiny_model("nemotron")  # its config says no biases; a trimmed-in one is not dropped
    model.model.layers[0].mlp.down_proj.bias = torch.nn.Parameter(torch.ones(48))
    with pytest.raises(MinitronError, match="no bias for mlp.proj but the model has one"):
        convert(model, "float32")


def windowed(family, **window):
    """A tiny model with these window settings (the tiny Mistral config fixes its window to None,
    and transformers reads it from the config at forward time)."""
    if family != "mistral":
        return tiny_model(family, **window)
    model = tiny_model(family)
    model.config.sliding_window = window["sliding_window"]
    return model


@pytest.mark.parametrize("family, window", [
    ("mistral", dict(sliding_window=6)),
    ("qwen2", dict(use_sliding_window=True, sliding_window=6, max_window_layers=2)),
])
def test_active_sliding_window_is_refused_in_one_line(family, window, tmp_path):
    """A TensorRT-LLM Llama/Qwen checkpoint has no attention window: a model whose window is
    shorter than the test sequence would have run with full attention."""
    model = windowed(family, **window)
    assert not torch.allclose(logits(model, IDS), logits(tiny_model(family), IDS), atol=1e-4)
    with pytest.raises(MinitronError) as err:
        write_trtllm(model, tmp_path, "float32")
    message = str(err.value)
    assert "\n" not in message and "=6 (shorter than max_position_embeddings=256)" in message
    assert message.endswith("use --format hf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("family, window", [
    ("mistral", dict(sliding_window=256)),
    ("mistral", dict(sliding_window=None)),
    ("qwen2", dict(use_sliding_window=False, sliding_window=6)),
    ("qwen2", dict(use_sliding_window=True, sliding_window=6, max_window_layers=4)),
])
def test_inactive_sliding_window_still_exports(family, window, tmp_path):
    """A window of at least max_position_embeddings, a disabled one, or one on no layer."""
    model = windowed(family, **window)
    torch.testing.assert_close(exported_logits(model, tmp_path), logits(model, IDS),
                               atol=1e-5, rtol=0)
