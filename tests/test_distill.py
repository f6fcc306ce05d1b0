"""Distillation end to end on tiny checkpoints: it learns, resumes exactly, refuses bad input."""

import json

import pytest
import torch
from tiny_models import save_distill_pair, save_tiny_checkpoint
from transformers import AutoModelForCausalLM

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.distill.api import DistillConfig, distill, work_dir_for
from minitron_deploy.distill.trainer import TrainConfig, lr_at, sample_indices


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny llama teacher, its width+depth-pruned student, and training text."""
    return save_distill_pair("llama", tmp_path_factory.mktemp("distill"), hidden=36)


def config(**kw) -> DistillConfig:
    base = dict(steps=6, seq_len=32, batch_size=2, grad_accum=2, lr=3e-3, checkpoint_every=2)
    base.update(kw)
    return DistillConfig(**base)


def run(pair, name, cfg, resume=False, on_step=None):
    return distill(pair / "teacher", pair / "student", pair / "text.txt", pair / name, cfg,
                   resume=resume, on_step=on_step)


def log(path):
    text = (path / "minitron" / "train_log.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_distillation_lowers_kd_loss_and_writes_stock_checkpoint(pair):
    report = run(pair, "out", config(steps=12, val_fraction=0.1, val_sequences=4))
    records = log(pair / "out")
    assert len(records) == 12 and records[-1]["tokens"] == 12 * 2 * 2 * 32
    assert records[-1]["kd"] < 0.8 * records[0]["kd"]
    assert report.last_loss == records[-1]["loss"]
    assert (pair / "out" / "minitron" / "loss_curve.png").stat().st_size > 1000
    assert (pair / "out" / "tokenizer.json").is_file()
    assert not work_dir_for(pair / "out").exists()
    model = AutoModelForCausalLM.from_pretrained(str(pair / "out"), trust_remote_code=False)
    assert model.config.hidden_size == 36 and model.config.num_hidden_layers == 3
    summary = json.loads((pair / "out" / "minitron" / "distill.json").read_text())
    assert summary["steps"] == 12 and summary["config"]["kd_temperature"] == 1.0
    val = summary["validation"]
    assert val["sequences"] == 4 and val["after"]["kd"] < val["before"]["kd"]


def test_resume_reproduces_uninterrupted_run_exactly(pair):
    run(pair, "straight", config())

    class Killed(Exception):
        pass

    def kill_after_3(record):
        if record["step"] == 3:
            raise Killed

    cfg = config()
    with pytest.raises(Killed):
        run(pair, "resumed", cfg, on_step=kill_after_3)
    assert not (pair / "resumed").exists()
    partial = work_dir_for(pair / "resumed")
    assert (partial / "student" / "latest").read_text() == "step-00000002"
    with pytest.raises(MinitronError, match="--resume"):
        run(pair, "resumed", cfg)
    run(pair, "resumed", cfg, resume=True)
    a, b = log(pair / "straight"), log(pair / "resumed")
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa = AutoModelForCausalLM.from_pretrained(str(pair / "straight")).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(str(pair / "resumed")).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoint_hook_sees_the_student_and_leaves_training_unchanged(pair):
    """Evaluating the student at every checkpoint (accuracy-vs-tokens curves) must not change
    the run: same losses and weights bit for bit as without the hook."""
    run(pair, "plain", config())
    seen = []

    def evaluate(step, student):
        student.eval()
        with torch.no_grad():
            seen.append((step, float(student(torch.tensor([[1, 2, 3]])).logits.sum())))

    distill(pair / "teacher", pair / "student", pair / "text.txt", pair / "hooked", config(),
            on_checkpoint=evaluate)
    assert [step for step, _ in seen] == [2, 4, 6]
    assert len({value for _, value in seen}) == 3  # a different student at each checkpoint
    assert [r["loss"] for r in log(pair / "plain")] == [r["loss"] for r in log(pair / "hooked")]
    wa = AutoModelForCausalLM.from_pretrained(str(pair / "plain")).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(str(pair / "hooked")).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("kw", [dict(intermediate_loss="cosine", intermediate_layers=2),
                                dict(intermediate_loss="mse", lm_loss_weight=0.5,
                                     kd_temperature=2.0),
                                dict(lm_loss_weight=1.0),
                                dict(teacher_correction_steps=2)])
def test_loss_variants_train(pair, kw):
    name = "variant-" + "-".join(f"{k}{v}" for k, v in kw.items())
    run(pair, name, config(steps=10, **kw))
    records = log(pair / name)
    assert records[-1]["loss"] < records[0]["loss"]
    if kw.get("intermediate_loss"):
        assert records[0]["hidden"] > 0
    if kw.get("lm_loss_weight") == 1.0:
        assert all(r["kd"] == 0 for r in records)


def test_bad_inputs(pair, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(MinitronError, match="no text"):
        distill(pair / "teacher", pair / "student", empty, tmp_path / "o1", config())
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 64)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": unquoted}\n')
    for bad in (binary, broken):
        with pytest.raises(MinitronError, match=f"cannot read {bad}"):
            distill(pair / "teacher", pair / "student", bad, tmp_path / "o1", config())
    with pytest.raises(MinitronError, match="context"):
        run(pair, "o2", config(seq_len=10_000))
    with pytest.raises(MinitronError, match="exactly one"):
        run(pair, "o3", config(tokens=100))
    with pytest.raises(MinitronError, match="teacher"):
        distill(pair / "teacher", pair / "student", pair / "text.txt", pair / "teacher", config())
    with pytest.raises(MinitronError, match="does not exist"):
        distill(pair / "nope", pair / "student", pair / "text.txt", tmp_path / "o4", config())
    other = tmp_path / "vocab120"
    save_tiny_checkpoint("llama", other, vocab_size=120)
    with pytest.raises(MinitronError, match="vocabulary"):
        distill(other, pair / "student", pair / "text.txt", tmp_path / "o5", config())
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())


def test_schedule_and_data_order():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))
    first = sample_indices(5, 0, 10, seed=3)
    assert sorted(first[:5].tolist()) == list(range(5)) == sorted(first[5:].tolist())
    assert torch.equal(sample_indices(5, 3, 4, seed=3), first[3:7])


def test_cli_distill_and_two_process_data_parallel(pair, tmp_path):
    """``torchrun`` with two gloo ranks of batch 1 equals one process of batch 2."""
    import os
    import subprocess
    import sys

    from minitron_deploy.cli import main

    common = ["distill", "--teacher", str(pair / "teacher"), "--student", str(pair / "student"),
              "--data", str(pair / "text.txt"), "--steps", "3", "--seq-len", "32", "--lr", "3e-3"]
    assert main([*common, "--batch-size", "2", "--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
                           "-m", "minitron_deploy.cli", *common, "--strategy", "ddp",
                           "--batch-size", "1", "--out", str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a = AutoModelForCausalLM.from_pretrained(str(tmp_path / "single")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ddp")).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    la, lb = log(tmp_path / "single"), log(tmp_path / "ddp")
    assert [r["tokens"] for r in la] == [r["tokens"] for r in lb]
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-5)
    assert main([*common, "--batch-size", "2", "--out", str(tmp_path / "single")]) == 2
