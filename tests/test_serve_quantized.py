"""Serving and benchmarking quantized checkpoints: the scheme and format read off a folder, the
engine table (scheme x format x hardware -> kernel) and its one-line refusals naming what would
run a folder, ``serve``/``bench`` refusing before anything starts; and, where the vLLM
environment is there, vLLM's CPU build on INT8 and FP8 students: transformers' first greedy
token and its perplexity within 1%, and ``bench --backend vllm`` beside the 16-bit source."""

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_models import char_tokenizer, save_tiny_checkpoint, tiny_model

pytest.importorskip("compressed_tensors")

from minitron_deploy.arch.modeling import load_config, load_model
from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.likelihood import next_token_nll
from minitron_deploy.core.quantized import (
    QUANTIZE_RECORD,
    Quantization,
    read_quantization,
)
from minitron_deploy.quantize import QUANTIZE_RECORD as WRITTEN_RECORD
from minitron_deploy.quantize import SCHEMES
from minitron_deploy.quantize.compressed import write_compressed
from minitron_deploy.serve import quant_support, server
from minitron_deploy.serve.parity import compare, hf_greedy, vllm_job
from minitron_deploy.serve.quant_support import (
    SUPPORT,
    Hardware,
    cpu_flags,
    markdown_table,
    vllm_kernel,
)

REPO = Path(__file__).resolve().parents[1]
#: 128 wide, 4 heads of 32 (vLLM's CPU attention needs head_dim >= 32), 2 KV groups.
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2)
AVX2 = Hardware("cpu", "CPU (AVX2)")
H100 = Hardware("cuda", "NVIDIA H100 (sm_90)", sm=90)
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pruned and quantized models serve."]


def quantized(root: Path, scheme: str, seed: int = 0) -> Path:
    out = root / scheme
    out.mkdir(parents=True)
    write_compressed(tiny_model("llama", seed=seed, **SHAPE), char_tokenizer(), out, scheme, [])
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    save_tiny_checkpoint("llama", root / "bf16", **SHAPE)
    return {"bf16": root / "bf16",
            **{s: quantized(root, s) for s in ("int8-w8a8", "fp8", "fp8-block")}}


# --- reading a folder's quantization ------------------------------------------------------

@pytest.mark.parametrize("scheme", ["int8-w8a8", "fp8", "fp8-block"])
def test_compressed_tensors_scheme_is_read_off_the_config(folders, scheme):
    quant = read_quantization(folders[scheme])
    assert (quant.scheme, quant.format) == (scheme, "compressed-tensors")
    assert quant.vllm_method == "compressed-tensors"


def test_other_folders(tmp_path, folders):
    assert read_quantization(folders["bf16"]) is None
    (tmp_path / "mo").mkdir()
    (tmp_path / "mo" / "hf_quant_config.json").write_text(
        json.dumps({"quantization": {"quant_algo": "NVFP4"}}))
    assert read_quantization(tmp_path / "mo").scheme == "nvfp4"
    assert read_quantization(tmp_path / "mo").vllm_method == "modelopt_fp4"
    (tmp_path / "gg").mkdir()
    (tmp_path / "gg" / "model.gguf").write_bytes(b"GGUF")
    assert read_quantization(tmp_path / "gg").format == "gguf"
    record = tmp_path / "rec" / "minitron" / QUANTIZE_RECORD
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"scheme": "w4a16", "format": "compressed-tensors"}))
    assert read_quantization(tmp_path / "rec").label == "w4a16 (compressed-tensors)"
    assert QUANTIZE_RECORD == WRITTEN_RECORD


# --- the table ------------------------------------------------------------------------------

def test_table_covers_every_scheme_in_its_formats():
    assert set(SUPPORT) == set(SCHEMES)
    for name, scheme in SCHEMES.items():
        formats = {f for k in SUPPORT[name] for f in k.formats}
        assert formats == set(scheme.formats), name


def test_readme_shows_the_table():
    assert markdown_table() in (REPO / "README.md").read_text()


@pytest.mark.parametrize("scheme, fmt, hardware, kernel", [
    ("int8-w8a8", "compressed-tensors", AVX2, "oneDNN INT8 W8A8"),
    ("fp8", "compressed-tensors", AVX2, "FP8 GEMM in torch (AMX-FP8 kernel where present)"),
    ("fp8", "compressed-tensors", H100, "CUTLASS FP8 W8A8"),
    ("fp8", "modelopt", Hardware("cuda", "A100 (sm_80)", sm=80), "Marlin FP8"),
    ("nvfp4", "modelopt", H100, "Marlin FP4"),
    ("w4a16", "compressed-tensors", Hardware("cpu", "CPU", cpu_flags=frozenset({"avx512f"})),
     "CPU W4A16"),
])
def test_kernel_chosen(scheme, fmt, hardware, kernel):
    assert vllm_kernel(Quantization(scheme, fmt), hardware).kernel == kernel


@pytest.mark.parametrize("quant, hardware, message", [
    (Quantization("fp8-block", "compressed-tensors"), AVX2,
     "vLLM CPU cannot run fp8-block (compressed-tensors) on this CPU (AVX2): it needs AMX; "
     "runs on: transformers"),
    (Quantization("w4a16", "compressed-tensors"), AVX2, "it needs AVX-512; runs on:"),
    (Quantization("gguf-q4_0", "gguf"), H100, "it has no kernel; runs on: transformers (any: "
     "dequantized on load (gguf_file=)); llama.cpp (any:"),
    (Quantization(None, "gguf", "file"), AVX2, "llama.cpp (any:"),
    (Quantization("nvfp4", "modelopt"), Hardware("cuda", "V100 (sm_70)", sm=70),
     "it needs sm_100+ or sm_75+; runs on: TensorRT-LLM (sm_100+:"),
])
def test_refusals_name_what_would_run_it(quant, hardware, message):
    with pytest.raises(MinitronError) as info:
        vllm_kernel(quant, hardware)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_formats_are_left_to_vllm():
    assert vllm_kernel(Quantization(None, "awq", "4-bit"), AVX2) is None
    assert vllm_kernel(None, AVX2) is None


def test_cpu_flags_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n")
    assert cpu_flags(info) == {"avx512f", "amx_tile"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


# --- serve and bench refuse before starting -------------------------------------------------

def test_serve_refuses_in_one_line_what_this_hardware_cannot_run(folders, capsys, monkeypatch):
    monkeypatch.setattr(server, "detect_hardware", lambda: AVX2)
    rc = main(["serve", "--model", str(folders["fp8-block"]), "--port", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "cannot run fp8-block (compressed-tensors)" in err and "vLLM GPU (sm_89+" in err


def test_serve_passes_the_quantization_on(folders, monkeypatch):
    monkeypatch.setattr(server, "detect_hardware", lambda: AVX2)
    settings = server.ServeSettings(model=str(folders["int8-w8a8"]), dtype="fp32")
    cmd = server.server_command(settings, "python", None, read_quantization(settings.path))
    assert cmd[cmd.index("--quantization") + 1] == "compressed-tensors"
    assert "int8-w8a8 (compressed-tensors) weights (oneDNN INT8 W8A8)" in \
        server.usage_lines(settings)[0]


def test_bench_fast_path_refuses_a_quantized_folder(folders, tmp_path, capsys):
    rc = main(["bench", "--models", str(folders["int8-w8a8"]), "--backend", "torch", "--device",
               "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "the torch backend runs 16-bit and fp8 (compressed-tensors) checkpoints; int8-w8a8 " \
           "is int8-w8a8 (compressed-tensors): time it with --backend vllm" in err
    assert not (tmp_path / "out").exists()


def test_bench_vllm_refuses_before_starting_what_has_no_kernel(folders, tmp_path, capsys,
                                                               monkeypatch):
    quant_support.detect_hardware.cache_clear()
    monkeypatch.setattr(quant_support, "cpu_flags", lambda: frozenset())
    monkeypatch.setenv("MINITRON_VLLM_PYTHON", str(tmp_path / "never-started"))
    rc = main(["bench", "--models", str(folders["fp8-block"]), "--backend", "vllm", "--device",
               "cpu", "--out", str(tmp_path / "out")])
    quant_support.detect_hardware.cache_clear()
    err = capsys.readouterr().err
    assert rc == 2 and "vLLM CPU cannot run fp8-block" in err and err.count("\n") == 1


# --- vLLM's CPU build on the quantized students ----------------------------------------------

@pytest.fixture(scope="module")
def vllm_env():
    from minitron_deploy.serve.vllm_env import vllm_python

    try:
        return vllm_python()
    except MinitronError as exc:
        pytest.skip(str(exc))


def test_vllm_cpu_runs_int8_and_fp8_students_as_transformers_does(vllm_env, folders):
    """One engine process, both students: greedy tokens from prompts, and prompt logprobs over
    whole texts. vLLM's kernels quantize activations their own way (INT8 scale amax / 127,
    FP8 in its own GEMM), so greedy tokens may part where the random model is within 0.1 of
    a tie; its perplexity stays within 1% of transformers' on the same checkpoint."""
    from minitron_deploy.serve.vllm_env import run_vllm

    tokenizer = char_tokenizer()
    texts = [tokenizer(t)["input_ids"] for t in TEXTS]
    prompts = [t[:8] for t in texts]
    names = ("int8-w8a8", "fp8")
    jobs = [{**vllm_job(str(folders[n]), load_config(folders[n]), "fp32", len(texts), 64),
             "generate": {"prompts": prompts, "max_tokens": 8, "logprobs": 5},
             "score": {"prompts": texts}} for n in names]
    result = run_vllm(jobs, threads=1)
    assert result["device"] == "cpu"
    for name, out in zip(names, result["models"]):
        assert "error" not in out, f"{name}: {out.get('error')}"
        model = load_model(folders[name], dtype="fp32")[0]
        for i, (prompt, vllm) in enumerate(zip(prompts, out["generate"])):
            tokens, logprobs = hf_greedy(model, prompt, 8)
            parity = compare(name, i, tokens, logprobs, vllm)
            assert parity.max_logprob_gap < 0.1, name
            # identical, or parted where transformers itself was within 0.1 of a tie
            assert parity.identical or abs(parity.hf_margin) < 0.1, (name, parity)
        nll = count = 0
        with torch.no_grad():
            for ids in texts:
                batch = torch.tensor([ids])
                total, n = next_token_nll(model(batch).logits, batch)
                nll, count = nll + total, count + n
        hf_ppl = math.exp(nll / count)
        scored = [lp for seq in out["score"] for lp in seq]
        assert len(scored) == count
        vllm_ppl = math.exp(-sum(scored) / len(scored))
        assert vllm_ppl == pytest.approx(hf_ppl, rel=0.01), name


def test_bench_reports_scheme_and_weight_bytes_beside_the_16_bit_source(vllm_env, folders,
                                                                        tmp_path):
    out = tmp_path / "report"
    rc = main(["bench", "--models", str(folders["bf16"]), str(folders["int8-w8a8"]),
               "--backend", "vllm", "--isl", "8", "--osl", "4", "--batch-sizes", "1",
               "--reps", "1", "--warmup", "0", "--dtype", "fp32", "--device", "cpu",
               "--no-plots", "--out", str(out)])
    assert rc == 0
    runs = {r["model"]: r for r in json.loads((out / "bench.json").read_text())["runs"]}
    assert runs["bf16"]["scheme"] == "fp32"
    assert runs["int8-w8a8"]["scheme"] == "int8-w8a8 (compressed-tensors)"
    on_disk = sum(p.stat().st_size for p in folders["int8-w8a8"].glob("*.safetensors"))
    assert runs["int8-w8a8"]["weight_bytes"] == on_disk < runs["bf16"]["weight_bytes"]
    assert runs["int8-w8a8"]["metrics"]["output_tok_s"] > 0
    assert "| int8-w8a8 | vllm | 1 | int8-w8a8 (compressed-tensors) |" in \
        (out / "bench.md").read_text()
