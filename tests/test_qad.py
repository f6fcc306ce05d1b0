"""Quantization-aware distillation (``distill(quantize=SCHEME)``, ``minitron distill
--quantize``, a recipe's ``quantize: {qad: true}``): the student trains through fake quantizers
whose logits are the written compressed-tensors checkpoint's as transformers loads it, gradients
pass them, zero training is post-training quantization, and resumes and FSDP keep to it."""

import json

import pytest
import torch
from recipe_inputs import fresh_ppl, tiny_recipe_header
from safetensors.torch import load_file
from test_distill_fsdp import BASE, torchrun
from test_quantize_compressed import per_row, qdq_int8
from tiny_models import save_distill_pair, tiny_batch, tiny_model
from transformers import AutoModelForCausalLM

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.distill.api import DistillConfig, distill, work_dir_for

pytest.importorskip("compressed_tensors")

from minitron_deploy.pipeline.recipe import load_recipe
from minitron_deploy.pipeline.run import build_stages, run_pipeline
from minitron_deploy.quantize.api import quantize
from minitron_deploy.quantize.qad import (
    fake_quantize_student,
    remove_fake_quantization,
)

TINY = {"seq_len": 32, "batch_size": 2, "lr": 3e-3}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_distill_pair("llama", tmp_path_factory.mktemp("qad"))


def run(pair, name, **kw):
    distill(pair / "teacher", pair / "student", pair / "text.txt", pair / name,
            DistillConfig(**{**TINY, **kw}))
    return pair / name


def forward(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def load(folder, attn="sdpa"):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                attn_implementation=attn).eval()


@pytest.mark.parametrize("scheme", ["int8-w8a8", "fp8"])
def test_trained_fake_quantized_student_is_the_written_checkpoint(pair, scheme):
    ids, seen = tiny_batch(), {}

    def final_logits(step, student):  # the trained student, through its fake quantizers
        seen["fake"] = forward(student, ids)
        remove_fake_quantization(student)
        seen["plain"] = forward(student, ids)
        fake_quantize_student(student, scheme)
        seen["attn"] = student.config._attn_implementation

    out = pair / f"qad-{scheme}"
    distill(pair / "teacher", pair / "student", pair / "text.txt", out,
            DistillConfig(**TINY, steps=3, checkpoint_every=3, quantize=scheme),
            on_checkpoint=final_logits)
    deployed = forward(load(out, seen["attn"]), ids)
    rel = ((seen["fake"] - deployed).abs().max() / deployed.abs().max()).item()
    assert rel < 1e-5  # measured: 0.0 (the same compressed-tensors numerics, bit for bit)
    quantization_error = (seen["plain"] - deployed).abs().max() / deployed.abs().max()
    assert quantization_error > 1e-4  # the fake quantizers were really on
    student = forward(load(pair / "student", seen["attn"]), ids)
    assert not torch.allclose(student, seen["plain"])  # and the student trained
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    record = json.loads((out / "minitron" / "quantize.json").read_text())
    assert (record["scheme"], record["format"]) == (scheme, "compressed-tensors")
    summary = json.loads((out / "minitron" / "distill.json").read_text())
    assert summary["config"]["quantize"] == scheme
    assert (out / "minitron" / "train_log.jsonl").is_file()


def test_zero_training_is_post_training_quantization(pair, tmp_path):
    """A step at a learning rate too small to move any fp32 weight: the folder is tensor for
    tensor what ``quantize()`` writes of the student."""
    qad = run(pair, "qad-zero", steps=1, lr=1e-30, quantize="int8-w8a8")
    ptq = tmp_path / "ptq"
    quantize(pair / "student", ptq, scheme="int8-w8a8", device="cpu", dtype="fp32")
    a, b = load_file(qad / "model.safetensors"), load_file(ptq / "model.safetensors")
    assert a.keys() == b.keys() and any(t.dtype == torch.int8 for t in a.values())
    for name in a:
        assert torch.equal(a[name], b[name]), name
    configs = [json.loads((d / "config.json").read_text()) for d in (qad, ptq)]
    assert configs[0]["quantization_config"] == configs[1]["quantization_config"]
    records = [json.loads((d / "minitron" / "quantize.json").read_text()) for d in (qad, ptq)]
    for key in ("scheme", "format", "source", "weight_bytes", "calibration"):
        assert records[0][key] == records[1][key], key


def test_gradients_pass_the_quantizers_straight_through():
    """Forward: the INT8 weight and per-token INT8 input (the reference quantizers of
    test_quantize_compressed); backward: each rounding is the identity."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 16)
    fake_quantize_student(torch.nn.Sequential(linear), "int8-w8a8")
    x = torch.randn(2, 5, 48, requires_grad=True)
    grad_out = torch.randn(2, 5, 16)
    out = linear(x)
    out.backward(grad_out)
    w_q, x_q = per_row(linear.weight.detach(), qdq_int8), per_row(x.detach(), qdq_int8)
    torch.testing.assert_close(out, x_q @ w_q.T + linear.bias, rtol=0, atol=1e-6)
    torch.testing.assert_close(x.grad, grad_out @ w_q)
    torch.testing.assert_close(linear.weight.grad, grad_out.flatten(0, 1).T @ x_q.flatten(0, 1))


def test_norms_below_quantized_inputs_learn(pair):
    """A layer norm feeds only quantized inputs (q, k, v; gate, up): without the
    straight-through estimator, rounding would stop its gradient."""
    model = tiny_model("llama").train()
    fake_quantize_student(model, "fp8")
    model(input_ids=tiny_batch(), use_cache=False).logits.square().mean().backward()
    for layer in model.model.layers:
        assert layer.input_layernorm.weight.grad.abs().sum() > 0
        assert layer.post_attention_layernorm.weight.grad.abs().sum() > 0


def test_unsupported_schemes_are_refused_in_one_line(pair, tmp_path, capsys):
    with pytest.raises(MinitronError, match="int8-w8a8, fp8, fp8-block"):
        DistillConfig(steps=1, quantize="w4a16")
    code = main(["distill", "--teacher", str(pair / "teacher"), "--student",
                 str(pair / "student"), "--data", str(pair / "text.txt"), "--out",
                 str(tmp_path / "x"), "--steps", "1", "--quantize", "nvfp4"])
    assert code != 0 and "int8-w8a8" in capsys.readouterr().err
    # fp8-block needs input features divisible by 128 (the tiny student has 48)
    with pytest.raises(MinitronError, match="divisible by 128"):
        run(pair, "block", steps=1, quantize="fp8-block")
    assert not (pair / "block").exists() and not work_dir_for(pair / "block").exists()


def test_resume_with_another_scheme_is_refused(pair):
    class Stop(Exception):
        pass

    def stop_after_2(record):
        if record["step"] == 2:
            raise Stop

    cfg = DistillConfig(**TINY, steps=3, checkpoint_every=1, quantize="int8-w8a8")
    args = (pair / "teacher", pair / "student", pair / "text.txt", pair / "resumed")
    with pytest.raises(Stop):
        distill(*args, cfg, on_step=stop_after_2)
    for other in ("fp8", None):
        with pytest.raises(MinitronError, match=f"quantize was int8-w8a8, now {other}"):
            distill(*args, DistillConfig(**{**vars(cfg), "quantize": other}), resume=True)
    distill(*args, cfg, resume=True)
    assert json.loads((pair / "resumed" / "minitron" / "quantize.json").read_text())[
        "scheme"] == "int8-w8a8"


def test_fsdp_two_ranks_equal_one_process(pair):
    """One step (FSDP reduces the gradients in another order): the same loss, and the same
    weights but where a weight sits on a rounding boundary. Later steps drift apart further,
    as any change in float order does through rounding."""
    settings = {**BASE, "steps": 1, "quantize": "int8-w8a8"}
    sharded = torchrun(2, pair, pair / "qad-fsdp", {**settings, "batch_size": 1,
                                                   "strategy": "fsdp"})
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    single = run(pair, "qad-single", **{**settings, "batch_size": 2})
    losses = [json.loads((d / "minitron" / "distill.json").read_text())["first_loss"]
              for d in (single, pair / "qad-fsdp")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    a, b = load_file(single / "model.safetensors"), load_file(pair / "qad-fsdp" / "model.safetensors")
    assert a.keys() == b.keys()
    flips, total = 0, 0
    for name in a:
        if a[name].dtype == torch.int8:
            step = (a[name].int() - b[name].int()).abs()
            assert step.max() <= 1, name
            flips, total = flips + int(step.sum()), total + step.numel()
        else:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)
    assert total > 0 and flips <= total // 1000


@pytest.fixture
def qad_recipe(tmp_path):
    recipe_file = tmp_path / "qad.yaml"
    recipe_file.write_text(tiny_recipe_header(tmp_path, "qad") + """
prune: {target_params: 0.6, calib_samples: 8, seq_len: 32, batch_size: 4}
distill: {steps: 3, seq_len: 32, batch_size: 4, lr: 3.0e-3}
eval: {tasks: [ppl], seq_len: 32, ppl_seqs: 4}
quantize: {scheme: int8-w8a8, qad: true}
""")
    return recipe_file


def test_recipe_qad_distills_into_the_quantized_student(qad_recipe):
    work = qad_recipe.parent / "work"
    result = run_pipeline(load_recipe(qad_recipe), work)
    distilled = work / "distilled"
    assert result.quantized == distilled and not (work / "quantized").exists()
    assert json.loads((distilled / "minitron" / "distill.json").read_text())["config"][
        "quantize"] == "int8-w8a8"
    assert result.results["distilled"]["ppl"] == pytest.approx(
        fresh_ppl(distilled, qad_recipe.parent / "held.txt"), rel=1e-6)
    report = (work / "report.md").read_text()
    assert "quantized: int8-w8a8 (compressed-tensors)" in report


def test_recipe_qad_settings(qad_recipe, tmp_path):
    names = [s.name for s in build_stages(load_recipe(qad_recipe), tmp_path, tmp_path / "t",
                                          tmp_path / "d", tmp_path / "h")]
    assert names == ["prune", "distill", "eval"]
    with pytest.raises(MinitronError, match=r"quantize\.qad: .*not w4a16"):
        load_recipe(qad_recipe, {"quantize.scheme": "w4a16"})
    with pytest.raises(SystemExit):  # qad is a recipe's, not minitron quantize's
        main(["quantize", "--model", "m", "--out", "o", "--qad", "true"])
