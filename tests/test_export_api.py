"""``minitron export`` / ``minitron_deploy.export_model`` end to end: every format writes
atomically with a manifest whose hashes match the files; bad inputs leave nothing behind."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import CALIB_TEXT, logits, save_tiny_checkpoint, tiny_batch
from transformers import AutoModelForCausalLM

import minitron_deploy
from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.files import sha256_file
from minitron_deploy.export import (
    MANIFEST,
    CalibrationSettings,
    TrtllmCheckpoint,
    export,
    verify_manifest,
)

IDS = tiny_batch(2, 20)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "llama"
    save_tiny_checkpoint("llama", path)
    return path


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(CALIB_TEXT)
    return path


def reference(model_dir):
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager")
    return logits(model.eval(), IDS)


def test_python_api_is_the_cli(llama_dir, tmp_path, capsys):
    assert minitron_deploy.export_model is export
    out = tmp_path / "ckpt"
    assert main(["export", "--model", str(llama_dir), "--format", "trtllm", "--dtype", "fp32",
                 "--tp", "2", "--out", str(out)]) == 0
    assert "wrote trtllm (fp32)" in capsys.readouterr().out
    manifest = verify_manifest(out)
    assert manifest["source"] == str(llama_dir.resolve()) and manifest["tp"] == 2
    assert manifest["shape"]["hidden_size"] == 48 and manifest["dtype"] == "fp32"
    assert {"config.json", "rank0.safetensors", "rank1.safetensors"} <= manifest["files"].keys()
    for name, digest in manifest["files"].items():
        assert sha256_file(out / name) == digest
    torch.testing.assert_close(TrtllmCheckpoint.load(out).logits(IDS), reference(llama_dir),
                               atol=1e-5, rtol=0)


def test_manifest_detects_a_changed_file(llama_dir, tmp_path):
    out = export(llama_dir, tmp_path / "hf", format="hf", dtype="fp32").out_dir
    with open(out / "config.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(MinitronError, match="differ from the manifest"):
        verify_manifest(out)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_hf_export_round_trips(llama_dir, tmp_path, dtype):
    out = export(llama_dir, tmp_path / "hf", format="hf", dtype=dtype).out_dir
    model = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager",
                                                 dtype=torch.float32)
    assert model.config.rope_parameters["rope_theta"] == 500000.0
    assert (out / "tokenizer.json").is_file()
    diff = (logits(model.eval(), IDS) - reference(llama_dir)).abs().max()
    assert diff == 0 if dtype == "fp32" else diff < 0.02


def test_hf_fp8_is_modelopt_checkpoint_close_to_source(llama_dir, tmp_path, calib_file):
    calib = CalibrationSettings(source=calib_file, num_samples=8, seq_len=16, batch_size=4)
    result = export(llama_dir, tmp_path / "fp8", format="hf", dtype="fp8", calib=calib)
    out = result.out_dir
    assert result.manifest["calibration"]["samples"] == 8
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_algo"] == "FP8"
    weights = load_file(out / "model.safetensors")
    proj = "model.layers.0.mlp.down_proj"
    assert weights[f"{proj}.weight"].dtype == torch.float8_e4m3fn
    # Dequantize every FP8 weight into the source model and compare logits.
    model = AutoModelForCausalLM.from_pretrained(str(llama_dir), attn_implementation="eager")
    state = {k: (v.float() * weights[k.replace(".weight", ".weight_scale")]
                 if v.dtype == torch.float8_e4m3fn else v.float())
             for k, v in weights.items() if not k.endswith(("_scale",))}
    model.load_state_dict(state, strict=False)
    ref = reference(llama_dir)
    assert (logits(model.eval(), IDS) - ref).norm() / ref.norm() < 0.1


def test_trtllm_fp8_through_cli(llama_dir, tmp_path, calib_file):
    out = tmp_path / "fp8"
    assert main(["export", "--model", str(llama_dir), "--format", "trtllm", "--dtype", "fp8",
                 "--calib", str(calib_file), "--calib-samples", "8", "--seq-len", "16",
                 "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["quant_algo"] == "FP8" and config["dtype"] == "bfloat16"
    ref = reference(llama_dir)
    got = TrtllmCheckpoint.load(out).logits(IDS)
    assert (got - ref).norm() / ref.norm() < 0.12


def test_onnx_export_with_the_default_dtype(llama_dir, tmp_path):
    from minitron_deploy.export.onnx import ONNX_FILE, onnx_logits

    out = tmp_path / "onnx"
    assert main(["export", "--model", str(llama_dir), "--format", "onnx", "--out", str(out)]) == 0
    manifest = verify_manifest(out)
    assert ONNX_FILE in manifest["files"] and manifest["dtype"] == "fp32"
    torch.testing.assert_close(onnx_logits(out / ONNX_FILE, IDS), reference(llama_dir),
                               atol=1e-4, rtol=0)


def _refused(argv, tmp_path, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minitron: error:") and message in err and "\n" not in err
    assert not [p for p in tmp_path.iterdir() if p.name != "src"], "something was written"


@pytest.mark.parametrize("args, message", [
    (["--format", "trtllm", "--dtype", "fp8"], "needs calibration text"),
    (["--format", "onnx", "--dtype", "fp8"], "ONNX export is float32 only"),
    (["--format", "hf", "--tp", "2"], "--tp applies to --format trtllm only"),
    (["--format", "trtllm", "--tp", "4"], "--tp 4 does not divide"),
])
def test_bad_requests_are_refused(llama_dir, tmp_path, capsys, args, message):
    _refused(["export", "--model", str(llama_dir), "--out", str(tmp_path / "out"), *args],
             tmp_path, capsys, message)


def test_not_a_model_dir(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    _refused(["export", "--model", str(tmp_path / "src"), "--format", "hf", "--out",
              str(tmp_path / "out")], tmp_path, capsys, "not a Hugging Face checkpoint")


def test_unknown_format_is_refused_by_the_parser(llama_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(llama_dir), "--format", "tflite", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(MinitronError, match="unknown format 'tflite'"):
        export(llama_dir, tmp_path / "x", format="tflite")


def test_fp8_refused_for_unsupported_family(tmp_path, capsys):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50).save_pretrained(tmp_path / "src")
    _refused(["export", "--model", str(tmp_path / "src"), "--format", "trtllm", "--dtype", "fp8",
              "--out", str(tmp_path / "out")], tmp_path, capsys, "unsupported architecture 'gpt2'")


def test_fp8_refused_for_misaligned_shape(tmp_path, capsys):
    save_tiny_checkpoint("llama", tmp_path / "src", hidden_size=36, num_attention_heads=6)
    capsys.readouterr()
    _refused(["export", "--model", str(tmp_path / "src"), "--format", "trtllm", "--dtype", "fp8",
              "--out", str(tmp_path / "out")], tmp_path, capsys, "hidden_size is 36")


def test_unwritable_output_leaves_nothing(llama_dir, tmp_path, capsys):
    blocker = tmp_path / "blocker"  # a file where the output's parent directory should be
    blocker.write_text("x")
    assert main(["export", "--model", str(llama_dir), "--format", "hf", "--out",
                 str(blocker / "out")]) == 2
    assert "cannot write to" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"]


def test_failure_midway_leaves_nothing(llama_dir, tmp_path, monkeypatch):
    import minitron_deploy.export.trtllm as trtllm

    def broken(*args, **kwargs):
        raise MinitronError("boom")

    monkeypatch.setattr(trtllm, "split_tensors", broken)
    with pytest.raises(MinitronError, match="boom"):
        export(llama_dir, tmp_path / "out", format="trtllm", dtype="fp32")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused(llama_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(MinitronError, match="already exists and is not empty"):
        export(llama_dir, tmp_path / "out", format="hf")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
    assert MANIFEST not in os.listdir(tmp_path / "out")
