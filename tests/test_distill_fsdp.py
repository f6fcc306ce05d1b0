"""FSDP2 distillation and sharded (DCP) checkpoints on CPU with gloo ranks under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_distill_pair

from minitron_deploy.distill.api import DistillConfig, distill, work_dir_for

WORKER = Path(__file__).with_name("distill_worker.py")
BASE = dict(steps=4, seq_len=32, grad_accum=2, lr=3e-3, checkpoint_every=2)


def torchrun(nproc: int, pair: Path, out: Path, settings: dict,
             kill_after: int | None = None, **env_vars: str) -> subprocess.CompletedProcess:
    args = [str(pair / "teacher"), str(pair / "student"), str(pair / "text.txt"), str(out),
            json.dumps(settings)] + ([str(kill_after)] if kill_after else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_vars,
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           str(nproc), "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0",
                           str(WORKER), *args], capture_output=True, text=True, env=env,
                          timeout=600)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"]
            for line in (path / "minitron" / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_distill_pair("llama", tmp_path_factory.mktemp("fsdp-llama"))


@pytest.fixture(scope="module")
def llama_fsdp(llama):
    """An uninterrupted 2-rank FSDP run (micro-batch 1 per rank)."""
    out = llama / "fsdp"
    done = torchrun(2, llama, out, {**BASE, "batch_size": 1, "strategy": "fsdp",
                                    "teacher_sharding": "shard"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def single_process(pair: Path, name: str, **kw) -> Path:
    distill(pair / "teacher", pair / "student", pair / "text.txt", pair / name,
            DistillConfig(**{**BASE, "batch_size": 2, **kw}))
    return pair / name


def assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-5, msg=k)


def test_fsdp_two_ranks_equal_one_process_llama(llama, llama_fsdp):
    single = single_process(llama, "single")
    assert_close_weights(single, llama_fsdp)
    assert losses(single) == pytest.approx(losses(llama_fsdp), rel=1e-5)
    layout = json.loads((llama_fsdp / "minitron" / "distill.json").read_text())["layout"]
    assert layout["strategy"] == "fsdp" and layout["shard_teacher"]
    # The gathered output is a stock, unsharded checkpoint of the student's shape.
    config = json.loads((llama_fsdp / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 3


def test_fsdp_two_ranks_equal_one_process_qwen3_replicated_teacher(tmp_path):
    pair = save_distill_pair("qwen3", tmp_path)
    out = pair / "fsdp"
    done = torchrun(2, pair, out, {**BASE, "batch_size": 1, "strategy": "fsdp",
                                   "teacher_sharding": "replicate",
                                   "activation_checkpointing": True,
                                   "intermediate_loss": "mse"})
    assert done.returncode == 0, done.stderr[-3000:]
    single = single_process(pair, "single", intermediate_loss="mse")
    assert_close_weights(single, out)
    summary = json.loads((out / "minitron" / "distill.json").read_text())
    assert not summary["layout"]["shard_teacher"]


def test_fsdp_validation_runs_on_the_sharded_student_on_every_rank(llama, tmp_path):
    """The loss before training is computed after sharding (on a GPU the student is still on
    the CPU before), with every rank running the forward, and equals one process's."""
    val = dict(steps=2, val_fraction=0.2, val_sequences=4)
    spy = tmp_path / "validation.log"
    out = llama / "fsdp-validated"
    done = torchrun(2, llama, out, {**BASE, **val, "batch_size": 1, "strategy": "fsdp",
                                    "teacher_sharding": "shard"}, SPY_VALIDATION=str(spy))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(spy.read_text().split()) == ["0:sharded"] * 2 + ["1:sharded"] * 2
    single = single_process(llama, "single-validated", **val)
    before = [json.loads((p / "minitron" / "distill.json").read_text())["validation"]["before"]
              for p in (out, single)]
    assert before[0] == pytest.approx(before[1], rel=0, abs=1e-5)


def test_sigkill_and_resume_on_two_ranks_is_bitwise_identical(llama, llama_fsdp):
    out = llama / "killed"
    settings = {**BASE, "batch_size": 1, "strategy": "fsdp", "teacher_sharding": "shard"}
    killed = torchrun(2, llama, out, settings, kill_after=3)
    assert killed.returncode != 0 and not out.exists()
    work = work_dir_for(out)
    assert (work / "student" / "latest").read_text() == "step-00000002"
    resumed = torchrun(2, llama, out, {**settings, "resume": True})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    wa, wb = weights(llama_fsdp), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert losses(out) == losses(llama_fsdp)
    assert not work.exists()


def test_two_rank_checkpoint_resumes_on_one_process(llama, llama_fsdp):
    out = llama / "killed-then-single"
    killed = torchrun(2, llama, out, {**BASE, "batch_size": 1, "strategy": "fsdp",
                                      "teacher_sharding": "shard"}, kill_after=3)
    assert killed.returncode != 0
    # One process takes the global batch of the two ranks: the same tokens per step.
    distill(llama / "teacher", llama / "student", llama / "text.txt", out,
            DistillConfig(**{**BASE, "batch_size": 2}), resume=True)
    assert_close_weights(llama_fsdp, out)
    assert losses(out)[:2] == losses(llama_fsdp)[:2]  # checkpointed steps, from the log
    assert losses(out) == pytest.approx(losses(llama_fsdp), rel=1e-5)


def test_resume_refuses_another_global_batch(llama):
    from minitron_deploy.core.errors import MinitronError

    def crash_at_3(record):
        if record["step"] == 3:
            raise RuntimeError("crash")

    out = llama / "crashed-other-batch"
    with pytest.raises(RuntimeError, match="crash"):
        distill(llama / "teacher", llama / "student", llama / "text.txt", out,
                DistillConfig(**{**BASE, "batch_size": 2}), on_step=crash_at_3)
    with pytest.raises(MinitronError, match="tokens per step"):
        distill(llama / "teacher", llama / "student", llama / "text.txt", out,
                DistillConfig(**{**BASE, "batch_size": 1}), resume=True)


def test_fsdp_without_torchrun_is_refused(llama, tmp_path):
    from minitron_deploy.core.errors import MinitronError

    with pytest.raises(MinitronError, match="torchrun"):
        single_process(llama, "no-torchrun", strategy="fsdp")
    assert not (llama / "no-torchrun").exists() and not work_dir_for(llama / "no-torchrun").exists()


def test_auto_layout_is_the_planners_choice(llama, monkeypatch):
    """``auto`` asks the memory planner: one process here; refused before loading when even
    the leanest layout does not fit, saying what would."""
    from minitron_deploy.arch.modeling import load_config
    from minitron_deploy.core.dist import DistEnv
    from minitron_deploy.core.errors import MinitronError
    from minitron_deploy.distill import api
    from minitron_deploy.distill.api import resolve_layout

    teacher, student = load_config(llama / "teacher"), load_config(llama / "student")
    cfg = DistillConfig(**{**BASE, "batch_size": 2})
    cpu = torch.device("cpu")
    layout = resolve_layout(cfg, DistEnv(), teacher, student, cpu)
    assert (layout.strategy, layout.activation_checkpointing) == ("single", False)
    monkeypatch.setattr(api, "device_memory", lambda device: 64 << 10)
    with pytest.raises(MinitronError, match="would fit|fits"):
        resolve_layout(cfg, DistEnv(), teacher, student, cpu)
