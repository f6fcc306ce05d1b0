"""The torch fast path in FP8: compressed-tensors ``fp8`` checkpoints (weights as stored,
activations per token) through ``torch._scaled_mm``, checked on CPU against transformers and
compressed-tensors; the FP8 GEMM on CUDA where an sm_89+ GPU is present."""

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import char_tokenizer, tiny_batch, tiny_model

pytest.importorskip("compressed_tensors")
from safetensors.torch import load_file

from minitron_deploy.arch.modeling import load_model
from minitron_deploy.bench import fp8
from minitron_deploy.bench.api import BenchSettings, benchmark
from minitron_deploy.bench.engine import EngineWeights, prefill_layer, rms_norm
from minitron_deploy.bench.models import ModelSpec
from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.quantize.compressed import write_compressed

CPU = torch.device("cpu")
#: 4 heads of 32 over 2 KV groups: every projection a multiple of 16, as the FP8 GEMM needs.
SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2}


def written(root, scheme="fp8", dtype=torch.float32, family="llama", **shape):
    out = root / f"{family}-{scheme}-{str(dtype)[6:]}"
    out.mkdir()
    model = tiny_model(family, **(shape or SHAPE)).to(dtype)
    write_compressed(model, char_tokenizer(), out, scheme, [])
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    return {"fp8": written(root), "int8": written(root, "int8-w8a8")}


def engine_logits(weights: EngineWeights, ids: torch.Tensor) -> torch.Tensor:
    """Every position's logits through the fast path's prefill (what decoding builds on)."""
    s, n = weights.shape, ids.shape[1]
    x = F.embedding(ids, weights.embed)
    for layer in weights.layer_tensors():
        cache = torch.zeros(ids.shape[0], s.num_kv_heads, n, s.head_dim, dtype=x.dtype)
        x = prefill_layer(x, layer, s, weights.cos[:n], weights.sin[:n], cache, cache.clone())
    return F.linear(rms_norm(x, weights.norm, s.eps), weights.lm_head)


def fake_quant_reference(model):
    """``model`` with FP8 weights dequantized and each quantized linear's input rounded to FP8
    per token (what compressed-tensors computes for FP8_DYNAMIC)."""
    for _, module in fp8.quantized_linears(model):
        module.weight = torch.nn.Parameter(module.weight.float() * module.weight_scale.float())

        def hook(_, args):
            q, scale = fp8.quantize_tokens(args[0])
            return (q.float() * scale,)
        module.register_forward_pre_hook(hook)
    return model


# --- the pieces ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_memory_fp8_is_bit_for_bit_what_minitron_quantize_writes(tmp_path, dtype):
    stored = load_file(written(tmp_path, dtype=dtype) / "model.safetensors")
    model = fp8.quantize_fp8(tiny_model("llama", **SHAPE).to(dtype))
    for name, module in fp8.quantized_linears(model):
        assert torch.equal(module.weight.view(torch.uint8), stored[f"{name}.weight"].view(torch.uint8))
        assert torch.equal(module.weight_scale, stored[f"{name}.weight_scale"])
    assert model.lm_head.weight.dtype == dtype


def test_per_token_scales_are_the_row_absmax_over_448():
    x = torch.tensor([[1.0, -896.0, 3.0], [0.0, 0.0, 0.0], [2e-3, 1e-3, -4e-3]])
    q, scale = fp8.quantize_tokens(x)
    assert q.dtype == fp8.FP8 and scale.dtype == torch.float32
    assert scale[:, 0].tolist() == [2.0, torch.finfo(torch.float32).eps,
                                    pytest.approx(4e-3 / 448, rel=1e-6)]
    assert q[0].float().tolist() == [0.5, -448.0, 1.5] and not q[1].float().any()


def test_fp8_linear_equals_the_dequantized_product():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 64, generator=g), torch.randn(48, 64, generator=g)
    x[0, 0] = 0  # a zero token: eps scale, zero output
    weight, scale = fp8.quantize_weight(w)
    out = fp8.fp8_linear(x, fp8.Fp8Weight(weight, scale.reshape(1, -1)), bias=torch.ones(48))
    q, xs = fp8.quantize_tokens(x.reshape(-1, 64))
    ref = (q.float() * xs) @ (weight.float() * scale).T + 1
    assert out.shape == (3, 5, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out.reshape(-1, 48), ref, rtol=1e-6, atol=1e-5)
    assert torch.equal(out[0, 0], torch.ones(48))


# --- whole models ----------------------------------------------------------------------------

def test_fast_path_logits_equal_transformers_on_the_fp8_checkpoint(folders):
    ids = tiny_batch(2, 12)
    hf, _ = load_model(folders["fp8"], "fp32", "cpu")  # FP8 weights, per-token activations
    with torch.no_grad():
        expected = hf(ids).logits
    model = fp8.load_fp8_checkpoint(folders["fp8"], CPU, torch.float32)
    stored = load_file(folders["fp8"] / "model.safetensors")
    q_proj = model.model.layers[0].self_attn.q_proj
    assert torch.equal(q_proj.weight.view(torch.uint8),  # as stored, not dequantized
                       stored["model.layers.0.self_attn.q_proj.weight"].view(torch.uint8))
    weights = EngineWeights(model, 16)
    assert isinstance(weights.layer_tensors()[0].gate_up, fp8.Fp8Weight)
    with torch.no_grad():
        got = engine_logits(weights, ids)
    # measured: 0.0 (torch's CPU _scaled_mm in fp32 sums as the dequantized matmul does)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["phi3", "qwen2", "qwen3"])
def test_fused_checkpoint_slices_and_biases_keep_their_scales(family):
    """phi3 stores q/k/v fused (the adapter slices rows of one FP8 matrix), qwen2 adds q/k/v
    biases, qwen3 q/k norms."""
    model = fp8.quantize_fp8(tiny_model(family))
    ids = tiny_batch(2, 10)
    with torch.no_grad():
        got = engine_logits(EngineWeights(model, 16), ids)
        expected = fake_quant_reference(model)(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# --- bench ---------------------------------------------------------------------------------

def test_bench_times_an_fp8_checkpoint_on_the_fast_path(folders, tmp_path, capsys):
    rc = main(["bench", "--models", str(folders["fp8"]), "--backend", "torch", "--device", "cpu",
               "--dtype", "fp32", "--isl", "6", "--osl", "3", "--batch-sizes", "2",
               "--reps", "1", "--warmup", "0", "--no-plots", "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    (run,) = json.loads((tmp_path / "out" / "bench.json").read_text())["runs"]
    assert run["scheme"] == "fp8 (compressed-tensors)" and run["limits"] == {}
    assert run["repetitions"][0]["output_tokens"] == 6


def test_in_memory_fp8_of_a_16_bit_model(tmp_path):
    folder = tmp_path / "shape"
    folder.mkdir()
    tiny_model("llama", **SHAPE).config.save_pretrained(folder)  # config only: random weights
    settings = BenchSettings(models=[ModelSpec(str(folder))], isl=6, osl=3, batch_sizes=(1,),
                             reps=1, warmup=0, dtype="fp32", device="cpu", quantize="fp8")
    (run,) = benchmark(settings, progress=lambda _: None)["runs"]
    from minitron_deploy.quantize.schemes import weight_bytes

    assert run["scheme"] == "fp8 (in memory)"
    assert run["weight_bytes"] == weight_bytes(tiny_model("llama", **SHAPE).config, "fp8")


def test_other_schemes_are_refused_naming_vllm(folders, tmp_path, capsys):
    rc = main(["bench", "--models", str(folders["int8"]), "--backend", "torch", "--device", "cpu",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "the torch backend runs 16-bit and fp8 (compressed-tensors) checkpoints; " \
           "llama-int8-w8a8-float32 is int8-w8a8 (compressed-tensors): time it with --backend vllm" \
        in err
    with pytest.raises(MinitronError, match="int8-w8a8"):
        fp8.load_fp8_checkpoint(folders["int8"], CPU, torch.float32)
    assert not (tmp_path / "out").exists()


def test_a_device_without_fp8_gemm_is_refused_in_one_line(folders, tmp_path, capsys,
                                                          monkeypatch):
    def no_fp8(*args, **kwargs):
        raise RuntimeError("torch._scaled_mm is only supported on CUDA devices with compute "
                           "capability >= 9.0 or 8.9\nmore")

    monkeypatch.setattr(torch, "_scaled_mm", no_fp8)
    rc = main(["bench", "--models", str(folders["fp8"]), "--backend", "torch", "--device", "cpu",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "FP8 GEMM (torch._scaled_mm, row-wise scales; CUDA sm_89+) does not run on cpu" in err
    assert "time llama-fp8-float32 with --backend vllm" in err


@pytest.mark.parametrize("change, message", [
    ({"quantize": "int8-w8a8"}, "in-memory quantization is fp8 only"),
    ({"quantize": "fp8", "backends": ["torch", "hf"]}, "in-memory fp8 runs on the torch backend"),
])
def test_bad_in_memory_settings_are_refused(change, message):
    settings = BenchSettings(models=[ModelSpec("llama31-8b")], **change)
    with pytest.raises(MinitronError, match=message):
        settings.validate()


def test_in_memory_fp8_of_a_quantized_folder_is_refused(folders):
    settings = BenchSettings(models=[ModelSpec(str(folders["fp8"]))], device="cpu",
                             quantize="fp8")
    with pytest.raises(MinitronError, match="already quantized"):
        benchmark(settings, progress=lambda _: None)


@pytest.mark.parametrize("shape", [(48, 40), (40, 48)])
def test_fp8_shapes_the_gemm_cannot_take_are_refused(shape):
    weight = fp8.quantize_weight(torch.randn(*shape))[0]
    with pytest.raises(MinitronError, match="multiples of 16"):
        fp8.fused([weight], fp8.ScaleTable(torch.nn.Module()))


# --- CUDA ----------------------------------------------------------------------------------

def _has_fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.skipif(not _has_fp8_gpu(), reason="needs a CUDA GPU of compute capability 8.9+")
def test_cuda_fp8_gemm_equals_the_dequantized_product():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(37, 256, device="cuda", generator=g, dtype=torch.bfloat16)
    weight, scale = fp8.quantize_weight(torch.randn(512, 256, device="cuda", generator=g))
    out = fp8.fp8_linear(x, fp8.Fp8Weight(weight, scale.reshape(1, -1).float()))
    q, xs = fp8.quantize_tokens(x)
    ref = (q.float() * xs) @ (weight.float() * scale).T
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)  # bf16 output rounding
