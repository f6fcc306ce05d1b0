"""The weight-byte model: what each scheme's checkpoint holds, predicted from the config alone,
is exactly the tensor data ``minitron quantize`` writes (and the weight files' bytes within
their headers)."""

import json
import struct

import gguf
import pytest
import torch
from compressed_tensors.quantization import (
    QuantizationConfig,
    QuantizationStatus,
    apply_quantization_config,
    preset_name_to_scheme,
)
from safetensors import safe_open
from test_quantize_gguf import bpe_tokenizer
from tiny_models import CALIB_TEXT, tiny_config, tiny_model

from minitron_deploy.arch.modeling import load_config
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import count_params
from minitron_deploy.quantize import SCHEMES, compressed, quantize
from minitron_deploy.quantize.schemes import storage_of, weight_bytes

#: 128 wide (fp8-block's and w4a16's 128 columns), MLP 256; k/v have 64 rows (half a block);
#: a 320-token BPE vocabulary, which GGUF needs.
SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 320, "bos_token_id": 0,
         "eos_token_id": 1}
CALIB = {"calib_samples": 4, "seq_len": 16, "batch_size": 4, "device": "cpu", "dtype": "bf16"}


def source(root, family: str, **overrides):
    """A tiny bf16 checkpoint with a BPE tokenizer, saved once per family and shape."""
    folder = root / "-".join([family, *map(str, overrides.values())])
    if not folder.exists():
        model = tiny_model(family, **{**SHAPE, **overrides}).to(torch.bfloat16)
        model.save_pretrained(str(folder))
        bpe_tokenizer().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("weight-bytes")
    (root / "calib.txt").write_text(CALIB_TEXT)
    return root


def tensor_bytes(folder) -> int:
    """Bytes of the tensor data in the folder's weight file, read from its own index (the
    safetensors header's offsets, the GGUF reader's tensor sizes)."""
    if (folder / "model.gguf").is_file():
        return sum(int(t.n_bytes) for t in gguf.GGUFReader(folder / "model.gguf").tensors)
    with open(folder / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(end - start for key, v in header.items() if key != "__metadata__"
               for start, end in [v["data_offsets"]])


def check(folder, predicted: int) -> None:
    assert predicted == tensor_bytes(folder)
    on_disk = json.loads((folder / "minitron" / "quantize.json").read_text())
    after = on_disk["weight_bytes"]["after"]
    # the rest is the safetensors header, or the GGUF metadata with its 320-token vocabulary
    slack = 0.05 if (folder / "model.gguf").is_file() else 0.02
    assert predicted <= after <= predicted * (1 + slack)


@pytest.mark.parametrize("family, scheme, overrides", [
    ("llama", "int8-w8a8", {}),
    ("qwen2", "fp8", {}),  # q/k/v biases stay 16-bit
    ("llama_tied", "fp8-block", {}),  # one embedding; 64-row k/v in a partial block
    ("llama", "gguf-q8_0", {}),  # token_embd quantized too; Llama 3.1's rope_freqs tensor
    ("llama", "gguf-q4_0", {}),  # output in Q8_0
    ("llama_tied", "gguf-q4_0", {}),  # the tied embedding is the output: Q8_0
    ("llama", "gguf-q4_0", {"intermediate_size": 80}),  # 80-value rows are not whole blocks
])
def test_prediction_is_what_quantize_writes(root, family, scheme, overrides):
    model = source(root, family, **overrides)
    out = root / f"{family}-{scheme}-{len(overrides)}"
    quantize(model, out, scheme=scheme, **CALIB)
    check(out, weight_bytes(load_config(model), scheme))


@pytest.mark.parametrize("scheme", ["int8-w8a8", "fp8"])
def test_a_bf16_checkpoint_computed_in_fp32_is_written_in_bf16(root, scheme):
    """Loading in fp32 (fast on CPUs without AMX) does not double the unquantized tensors:
    they and the scales are written in the source's bf16, as the byte model predicts."""
    model = source(root, "llama")
    out = root / f"llama-{scheme}-fp32-compute"
    quantize(model, out, scheme=scheme, **{**CALIB, "dtype": "fp32"})
    check(out, weight_bytes(load_config(model), scheme))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys() if not k.endswith("weight")
                  or "norm" in k or "embed" in k or "lm_head" in k}
    assert dtypes == {"BF16"}


def test_modelopt_fp8_prediction_is_what_quantize_writes(root):
    pytest.importorskip("modelopt.torch.quantization")
    model = source(root, "llama")
    out = root / "llama-fp8-modelopt"
    quantize(model, out, scheme="fp8", format="modelopt", calib=root / "calib.txt", **CALIB)
    check(out, weight_bytes(load_config(model), "fp8", "modelopt"))


def test_w4a16_prediction_is_what_compressed_tensors_packs(root, monkeypatch):
    """GPTQ (llm-compressor) only chooses the INT4 values; the same compressor packs them. Here
    a min-max stand-in chooses them, so the packed layout is measured without llm-compressor."""
    def stand_in(model, tokenizer, calib):
        config = QuantizationConfig(
            config_groups={"group_0": preset_name_to_scheme("W4A16", compressed.TARGETS)},
            ignore=compressed.IGNORE, quantization_status=QuantizationStatus.FROZEN)
        apply_quantization_config(model, config)
        with torch.no_grad():
            for module in model.modules():
                if getattr(module, "quantization_scheme", None) is not None:
                    groups = module.weight.unflatten(-1, (-1, 128)).abs().amax(-1)
                    module.weight_scale.copy_(groups / 7.5)

    monkeypatch.setattr(compressed, "_gptq", stand_in)
    model = source(root, "qwen2")
    out = root / "qwen2-w4a16"
    quantize(model, out, scheme="w4a16", calib=root / "calib.txt", **CALIB)
    check(out, weight_bytes(load_config(model), "w4a16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NVFP4 is quantized on CUDA only")
def test_nvfp4_prediction_is_what_quantize_writes(root):
    pytest.importorskip("modelopt.torch.quantization")
    model = source(root, "llama")
    out = root / "llama-nvfp4"
    quantize(model, out, scheme="nvfp4", calib=root / "calib.txt",
             **{**CALIB, "device": "cuda"})
    check(out, weight_bytes(load_config(model), "nvfp4"))


def test_bf16_is_two_bytes_a_parameter_as_saved(root):
    model = source(root, "llama_tied")
    config = load_config(model)
    assert weight_bytes(config) == weight_bytes(config, "bf16") == 2 * count_params(config)
    header = json.loads((model / "model.safetensors").read_bytes()[8:][:struct.unpack(
        "<Q", (model / "model.safetensors").read_bytes()[:8])[0]])
    assert weight_bytes(config) == sum(end - start for k, v in header.items()
                                       if k != "__metadata__" for start, end in [v["data_offsets"]])


def test_bits_per_weight_of_a_4096_square_matrix():
    bits = {name: storage_of(name).linear.bits_per_weight() for name in SCHEMES}
    assert bits == pytest.approx({
        "int8-w8a8": 8 + 16 / 4096, "fp8": 8 + 16 / 4096, "fp8-block": 8 + 16 / 128**2,
        "w4a16": 4 + 16 / 128 + 128 / 4096**2, "nvfp4": 4 + 8 / 16 + 64 / 4096**2,
        "gguf-q8_0": 8.5, "gguf-q4_0": 4.5})
    assert storage_of("fp8", "modelopt").linear.bits_per_weight() == 8 + 64 / 4096**2


def test_quantized_bytes_shrink_with_the_shape_and_the_bits():
    config = tiny_config("llama", **SHAPE)
    order = ["bf16", "fp8", "w4a16", "gguf-q4_0"]
    sizes = [weight_bytes(config, name) for name in order]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_unknown_scheme_is_one_line():
    with pytest.raises(MinitronError, match="unknown scheme 'int3'"):
        weight_bytes(tiny_config("llama"), "int3")
