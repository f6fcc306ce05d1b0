"""``minitron quantize``: the scheme table and its refusals, the flags read off the settings
schema, ModelOpt's FP8 checkpoint proven against the fake-quantized model it came from, and
outputs written all or nothing, never over the input."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (
    CALIB_TEXT,
    logits,
    save_tiny_checkpoint,
    tiny_batch,
    tiny_config,
)
from transformers import AutoModelForCausalLM

from minitron_deploy.arch.modeling import load_model
from minitron_deploy.cli import build_parser, main
from minitron_deploy.commands.common import settings_from_args
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.files import content_hashes
from minitron_deploy.data.text import calibration_batches
from minitron_deploy.quantize import SCHEMES, QuantizeSettings, quantize, resolve_format

FP8_MAX = 448.0
#: Small calibration: two batches of four 32-token sequences.
CALIB = dict(calib_samples=8, seq_len=32, batch_size=4, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny fp32 Llama checkpoint and calibration text."""
    root = tmp_path_factory.mktemp("quantize")
    save_tiny_checkpoint("llama", root / "model")
    (root / "calib.txt").write_text(CALIB_TEXT)
    return root


@pytest.fixture(scope="module")
def fp8_modelopt(source):
    """The tiny checkpoint written as ModelOpt FP8 (the report and the folder)."""
    out = source / "fp8-modelopt"
    report = quantize(source / "model", out, scheme="fp8", format="modelopt",
                      calib=source / "calib.txt", **CALIB)
    return report, out


# --- the scheme table --------------------------------------------------------------------


def test_every_scheme_has_its_default_format_and_fp8_nvfp4_can_be_modelopt():
    assert set(SCHEMES) == {"fp8", "fp8-block", "int8-w8a8", "w4a16", "nvfp4", "gguf-q8_0",
                            "gguf-q4_0"}
    defaults = {name: resolve_format(name, None) for name in SCHEMES}
    assert defaults == {"fp8": "compressed-tensors", "fp8-block": "compressed-tensors",
                        "int8-w8a8": "compressed-tensors", "w4a16": "compressed-tensors",
                        "nvfp4": "modelopt", "gguf-q8_0": "gguf", "gguf-q4_0": "gguf"}
    assert {n for n, s in SCHEMES.items() if "modelopt" in s.formats} == {"fp8", "nvfp4"}
    assert all(s.description for s in SCHEMES.values())
    # ModelOpt's FP8 calibrates static activation ranges; the dynamic one does not
    assert SCHEMES["fp8"].needs_calibration("modelopt")
    assert not SCHEMES["fp8"].needs_calibration("compressed-tensors")
    assert {n for n, s in SCHEMES.items() if s.needs_calibration(s.default_format)} == \
        {"w4a16", "nvfp4"}


@pytest.mark.parametrize("values, problem", [
    (dict(scheme="int4"), "scheme: 'int4' is not one of fp8, fp8-block"),
    (dict(scheme="nvfp4", format="compressed-tensors"),
     "format: scheme nvfp4 is written as modelopt, not compressed-tensors"),
    (dict(scheme="gguf-q4_0", format="modelopt"), "format: scheme gguf-q4_0 is written as gguf"),
    (dict(device="gpu"), "device: 'gpu' is not auto, cpu, cuda or cuda:N"),
    (dict(seq_len=1), "seq_len: 1 must be at least 2"),
])
def test_bad_settings_are_refused_in_one_line(values, problem):
    with pytest.raises(MinitronError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        QuantizeSettings(**values)


def test_flags_are_read_off_the_schema():
    args = build_parser().parse_args(
        ["quantize", "--model", "m", "--out", "o", "--scheme", "w4a16", "--calib", "c.txt",
         "--calib-samples", "16", "--seq-len", "64", "--device", "cpu"])
    settings = settings_from_args(QuantizeSettings, args)
    assert (args.model, args.out, args.calib) == ("m", "o", "c.txt")
    assert settings == QuantizeSettings(scheme="w4a16", calib_samples=16, seq_len=64,
                                        device="cpu")
    assert settings.resolved_format() == "compressed-tensors"


def test_a_format_the_scheme_lacks_is_one_usage_line(capsys, tmp_path):
    code = main(["quantize", "--model", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--scheme", "nvfp4", "--format", "gguf"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "format: scheme nvfp4 is written as modelopt, not gguf" in err


# --- refusals before any weight is loaded --------------------------------------------------


def test_nvfp4_on_the_cpu_is_refused_naming_why(source):
    out = source / "nvfp4"
    with pytest.raises(MinitronError, match="nvfp4 needs a CUDA device: ModelOpt's NVFP4 "
                                            "quantizer runs on CUDA only"):
        quantize(source / "model", out, scheme="nvfp4", calib=source / "calib.txt", **CALIB)
    assert not out.exists()


def test_calibrated_schemes_need_text(source):
    with pytest.raises(MinitronError, match=r"fp8 \(modelopt\) calibrates on text"):
        quantize(source / "model", source / "nocalib", scheme="fp8", format="modelopt", **CALIB)


@pytest.mark.parametrize("scheme, module", [("int8-w8a8", "compressed"), ("gguf-q8_0", "gguf")])
def test_a_backend_that_cannot_be_imported_is_one_line(source, monkeypatch, scheme, module):
    monkeypatch.setitem(sys.modules, f"minitron_deploy.quantize.{module}", None)
    out = source / f"no-{module}"
    with pytest.raises(MinitronError, match=f"scheme {scheme} needs the .* backend") as err:
        quantize(source / "model", out, scheme=scheme, calib=source / "calib.txt", **CALIB)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_the_input_is_never_written_over(source):
    before = content_hashes(source / "model")
    for out in (source / "model", source / "model" / "fp8"):
        with pytest.raises(MinitronError, match="is the input model; refusing to overwrite|"
                                                "inside the input model"):
            quantize(source / "model", out, scheme="fp8", format="modelopt",
                     calib=source / "calib.txt", **CALIB)
    assert content_hashes(source / "model") == before


def test_a_failing_backend_leaves_no_output(source, monkeypatch):
    import minitron_deploy.quantize.modelopt_hf as backend

    def half_written(model, tokenizer, out, scheme, calib, dtype):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("backend failed")

    monkeypatch.setattr(backend, "write_modelopt", half_written)
    out = source / "failed"
    with pytest.raises(RuntimeError, match="backend failed"):
        quantize(source / "model", out, scheme="fp8", format="modelopt",
                 calib=source / "calib.txt", **CALIB)
    assert not out.exists()
    assert not list(source.glob(".failed.tmp-*"))


# --- ModelOpt's FP8 checkpoint -------------------------------------------------------------


def test_modelopt_fp8_writes_the_unified_checkpoint(fp8_modelopt):
    report, out = fp8_modelopt
    quant = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == "FP8"
    assert set(quant["exclude_modules"]) >= {"lm_head"}
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "modelopt"
    weights = load_file(out / "model.safetensors")
    linears = [k[: -len(".weight")] for k, v in weights.items()
               if v.dtype == torch.float8_e4m3fn]
    assert len(linears) == 4 * 7  # q, k, v, o, gate, up, down of every layer
    for name in linears:  # per-tensor weight scale, static activation scale
        assert weights[f"{name}.weight_scale"].numel() == 1
        assert weights[f"{name}.input_scale"].numel() == 1
    # weights left unquantized keep the checkpoint's dtype (fp32 here)
    assert weights["lm_head.weight"].dtype == weights["model.embed_tokens.weight"].dtype \
        == torch.float32
    assert (out / "tokenizer.json").is_file()


def test_the_record_says_what_was_written(fp8_modelopt, source):
    report, out = fp8_modelopt
    record = json.loads((out / "minitron" / "quantize.json").read_text())
    assert (record["scheme"], record["format"]) == ("fp8", "modelopt")
    assert record["source"] == str((source / "model").resolve())
    before = (source / "model" / "model.safetensors").stat().st_size
    after = (out / "model.safetensors").stat().st_size
    assert record["weight_bytes"] == {"before": before, "after": after}
    assert (report.bytes_before, report.bytes_after) == (before, after) and after < before / 2
    assert record["calibration"]["samples"] == 8 and record["settings"]["seq_len"] == 32


def _dequantized_model(out):
    """A plain model from the written checkpoint: each FP8 weight times its scale, and each
    linear's input rounded to FP8 with its ``input_scale`` (what an FP8 GEMM sees)."""
    written = load_file(out / "model.safetensors")
    state = {k: v.float() * written[f"{k}_scale"] if v.dtype == torch.float8_e4m3fn else v
             for k, v in written.items() if not k.endswith(("weight_scale", "input_scale"))}
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="eager")
    model.load_state_dict(state, strict=True)

    def rounded_input(scale):
        def hook(module, args):
            x = (args[0] / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return (x.to(args[0].dtype) * scale,)
        return hook

    for name, module in model.named_modules():
        if f"{name}.input_scale" in written:
            module.register_forward_pre_hook(rounded_input(written[f"{name}.input_scale"]))
    return model.eval()


def test_modelopt_fp8_checkpoint_computes_what_the_fake_quantized_model_does(fp8_modelopt,
                                                                             source):
    import modelopt.torch.quantization as mtq

    _, out = fp8_modelopt
    model, tokenizer = load_model(source / "model")
    batches = calibration_batches(source / "calib.txt", tokenizer, 8, 32, 4)
    original = logits(model, tiny_batch(2, 16))
    fake = mtq.quantize(model, mtq.FP8_DEFAULT_CFG,
                        lambda m: [m(input_ids=ids, use_cache=False) for ids in batches])
    ids = tiny_batch(2, 16)
    expected = logits(fake, ids)
    got = logits(_dequantized_model(out), ids)
    # FP8 changes the logits by ~3e-2 here; the checkpoint differs from ModelOpt's own fake
    # quantization only by fp32 rounding of the scale (measured 1.5e-7), so 1e-5 would catch a
    # wrong scale, a missing input scale or a weight left unquantized
    assert (expected - original).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_bf16_checkpoint_keeps_its_unquantized_weights_in_bf16(source, tmp_path):
    model = save_tiny_checkpoint("llama", tmp_path / "bf16")
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    quantize(tmp_path / "bf16", tmp_path / "out", scheme="fp8", format="modelopt",
             calib=source / "calib.txt", **CALIB)
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert weights["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert weights["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn


# --- ModelOpt checkpoints as inputs ----------------------------------------------------------


def test_load_model_reads_modelopt_fp8_as_the_written_file_computes(fp8_modelopt, capsys):
    _, out = fp8_modelopt
    model, tokenizer = load_model(out)
    said = capsys.readouterr().out.strip().splitlines()
    assert said == [(f"{out}: ModelOpt FP8 dequantized on load (weight x weight_scale, "
                     "inputs rounded to FP8 by input_scale)")]
    ids = tiny_batch(2, 16)
    # the hand-built reference above (FP8 weights times scales, FP8-rounded inputs), which
    # matches ModelOpt's own fake quantization within 1.5e-7
    torch.testing.assert_close(logits(model, ids), logits(_dequantized_model(out), ids),
                               rtol=0, atol=1e-6)
    assert tokenizer is not None and not hasattr(model.config, "quantization_config")


def test_a_modelopt_nvfp4_folder_is_refused_on_load_in_one_line(fp8_modelopt, tmp_path):
    import shutil

    folder = tmp_path / "nvfp4"
    shutil.copytree(fp8_modelopt[1], folder)
    record = folder / "minitron" / "quantize.json"
    record.write_text(record.read_text().replace('"scheme": "fp8"', '"scheme": "nvfp4"'))
    with pytest.raises(MinitronError, match=r"is nvfp4 \(modelopt\); of ModelOpt checkpoints "
                                            "only FP8 ones load here") as err:
        load_model(folder)
    assert "\n" not in str(err.value)


def test_a_quantized_checkpoint_is_not_quantized_again(fp8_modelopt, source):
    out = source / "twice"
    with pytest.raises(MinitronError, match=r"the model .* is already quantized \(fp8 "
                                            r"\(modelopt\)\): quantize needs the 16-bit "
                                            "checkpoint it was made from"):
        quantize(fp8_modelopt[1], out, scheme="int8-w8a8", **CALIB)
    assert not out.exists()


@pytest.mark.parametrize("text, samples, problem", [
    (CALIB_TEXT, 1000, (r"calib.txt holds \d+ sequences of 32 tokens, fewer than "
                        "calib_samples 1000: give more text, or lower calib_samples")),
    ("too short", 8, "the data has 10 tokens, fewer than one sequence of 32"),
])
def test_calibration_text_too_short_for_the_scheme_is_refused(source, tmp_path, text, samples,
                                                               problem):
    (tmp_path / "calib.txt").write_text(text)
    out = tmp_path / "out"
    with pytest.raises(MinitronError, match=problem) as err:
        quantize(source / "model", out, scheme="fp8", format="modelopt",
                 calib=tmp_path / "calib.txt", **{**CALIB, "calib_samples": samples})
    assert "\n" not in str(err.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "calib.txt"]
