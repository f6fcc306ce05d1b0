"""TensorRT-LLM export of a quantized student: a compressed-tensors fp8 folder becomes an
FP8_PER_CHANNEL_PER_TOKEN checkpoint whose FP8 weights times their per-row scales are the
source's dequantized weights, exactly, on one rank and merged from two; other schemes and
formats are refused in one line with nothing written."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import char_tokenizer, tiny_model

pytest.importorskip("compressed_tensors")

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.export import export
from minitron_deploy.export.shard import merge_tensors
from minitron_deploy.quantize.compressed import write_compressed

SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2)
#: TensorRT-LLM linear -> the HF linears whose rows it stacks (fc is the activated gate).
FUSED = {"attention.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "attention.dense": ("self_attn.o_proj",), "mlp.fc": ("mlp.gate_proj",),
         "mlp.gate": ("mlp.up_proj",), "mlp.proj": ("mlp.down_proj",)}


def quantized(tmp_path, scheme: str):
    out = tmp_path / scheme
    out.mkdir()
    write_compressed(tiny_model("llama", **SHAPE), char_tokenizer(), out, scheme, [])
    return out


def dequantized(folder) -> dict[str, torch.Tensor]:
    source = load_file(str(folder / "model.safetensors"))
    return {k[:-len(".weight")]: v.float() * source[f"{k[:-len('weight')]}weight_scale"]
            for k, v in source.items() if v.dtype == torch.float8_e4m3fn}


@pytest.mark.parametrize("tp", [1, 2])
def test_fp8_student_keeps_its_weights_and_scales(tmp_path, tp):
    source = quantized(tmp_path, "fp8")
    result = export(source, tmp_path / "trt", format="trtllm", tp=tp)
    config = json.loads((tmp_path / "trt" / "config.json").read_text())
    assert config["quantization"]["quant_algo"] == "FP8_PER_CHANNEL_PER_TOKEN"
    assert result.dtype == "fp8" and result.manifest["tp"] == tp
    shards = [load_file(str(tmp_path / "trt" / f"rank{r}.safetensors")) for r in range(tp)]
    tensors = merge_tensors(shards, config)
    reference = dequantized(source)
    for layer in range(SHAPE["num_hidden_layers"]):
        for trt, hf in FUSED.items():
            name = f"transformer.layers.{layer}.{trt}"
            weight, scale = tensors[f"{name}.weight"], tensors[f"{name}.per_channel_scale"]
            assert weight.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
            expected = torch.cat([reference[f"model.layers.{layer}.{h}"] for h in hf])
            assert torch.equal(weight.float() * scale[:, None], expected), name
    assert tensors["lm_head.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("scheme, argv, message", [
    ("int8-w8a8", ["--format", "trtllm"], "takes fp8 (compressed-tensors) quantized checkpoints, "
                                          "not int8-w8a8 (compressed-tensors)"),
    ("fp8", ["--format", "hf"], "already quantized (fp8 (compressed-tensors)); only --format "
                                "trtllm"),
])
def test_other_quantized_requests_are_one_line(tmp_path, capsys, scheme, argv, message):
    source = quantized(tmp_path, scheme)
    capsys.readouterr()
    rc = main(["export", "--model", str(source), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_fp8_scales_must_be_per_row(tmp_path):
    source = quantized(tmp_path, "fp8")
    tensors = load_file(str(source / "model.safetensors"))
    key = next(k for k in tensors if k.endswith("weight_scale"))
    tensors[key] = tensors[key][:1]
    from safetensors.torch import save_file

    save_file(tensors, str(source / "model.safetensors"))
    with pytest.raises(MinitronError, match="one scale per output row"):
        export(source, tmp_path / "out", format="trtllm")
    assert not (tmp_path / "out").exists()
