"""A resumed distillation refuses, in one line naming them, settings or data that differ from
the checkpoint's: they would silently change the learning-rate schedule or the data order."""

import hashlib
import json
import re
import shutil

import pytest
import torch
from tiny_models import CALIB_TEXT, save_distill_pair
from transformers import AutoModelForCausalLM

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.distill.api import TOKEN_FILE, DistillConfig, distill, work_dir_for
from minitron_deploy.distill.checkpoint import data_sha256


def config(**kw) -> DistillConfig:
    base = dict(steps=6, seq_len=32, batch_size=2, grad_accum=2, lr=3e-3, checkpoint_every=2)
    return DistillConfig(**{**base, **kw})


def run(root, name, cfg, resume=False, data="text.txt", on_step=None):
    return distill(root / "teacher", root / "student", root / data, root / name, cfg,
                   resume=resume, on_step=on_step)


def losses(out):
    text = (out / "minitron" / "train_log.jsonl").read_text()
    return [json.loads(line)["loss"] for line in text.splitlines()]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny pair, an uninterrupted run ``straight`` and a run ``base`` killed after step 3
    (its last checkpoint: step 2)."""
    root = save_distill_pair("llama", tmp_path_factory.mktemp("resume"), hidden=36)
    (root / "other.txt").write_text(CALIB_TEXT[::-1])
    run(root, "straight", config())

    class Killed(Exception):
        pass

    def kill_after_3(record):
        if record["step"] == 3:
            raise Killed

    with pytest.raises(Killed):
        run(root, "base", config(), on_step=kill_after_3)
    return root


def copy_of_base(root, name):
    """A copy of the interrupted run's work dir for ``name``; its checkpoint folder."""
    work = work_dir_for(root / name)
    shutil.copytree(work_dir_for(root / "base"), work)
    return work / "student"


def refusal(root, name, cfg, data="text.txt") -> str:
    with pytest.raises(MinitronError) as err:
        run(root, name, cfg, resume=True, data=data)
    message = str(err.value)
    assert "\n" not in message and not (root / name).exists()
    return message


def fix(ckpt_dir) -> str:
    return f"(start over by deleting {ckpt_dir}, or resume with the same settings)"


@pytest.mark.parametrize("change, named", [
    (dict(lr=6e-3), "lr was 0.003, now 0.006"),
    (dict(warmup_steps=3), "warmup-steps was 1, now 3"),  # the default resolved: 5% of 6, 1
    (dict(seed=1), "seed was 0, now 1"),
], ids=["lr", "warmup", "seed"])
def test_resume_with_another_setting_is_refused_naming_it(root, change, named):
    name = "changed-" + "-".join(change)
    ckpt_dir = copy_of_base(root, name)
    assert refusal(root, name, config(**change)) == f"cannot resume: {named} {fix(ckpt_dir)}"


@pytest.mark.parametrize("change, named", [
    (dict(steps=8), "steps was 6, now 8"),
    (dict(batch_size=4), "tokens per step (batch size x grad-accum x ranks x seq-len) was "
                         "128 (2 x 2 x 1 x 32), now 256 (4 x 2 x 1 x 32)"),
], ids=["steps", "batch"])
def test_resume_taking_more_sequences_names_the_setting_and_the_data(root, change, named):
    name = "more-" + "-".join(change)
    ckpt_dir = copy_of_base(root, name)
    # the token file holds as many sequences as the run takes, so the data changes too
    message = refusal(root, name, config(**change))
    assert re.fullmatch(re.escape(f"cannot resume: {named}; ") + r"training data \(sha256\) "
                        r"was [0-9a-f]{12}, now [0-9a-f]{12} " + re.escape(fix(ckpt_dir)),
                        message)


def test_resume_with_other_data_is_refused_naming_both_hashes(root):
    ckpt_dir = copy_of_base(root, "other-data")
    state = json.loads((ckpt_dir / "step-00000002" / "state.json").read_text())
    old = state["settings"]["data_sha256"]
    message = refusal(root, "other-data", config(), data="other.txt")
    token_file = work_dir_for(root / "other-data") / TOKEN_FILE  # rebuilt from other.txt
    new = hashlib.sha256(token_file.read_bytes()).hexdigest()
    assert old != new
    assert message == (f"cannot resume: training data (sha256) was {old[:12]}, now {new[:12]} "
                       f"{fix(ckpt_dir)}")


def test_checkpoint_without_recorded_settings_is_refused(root):
    ckpt_dir = copy_of_base(root, "old-format")
    state_file = ckpt_dir / "step-00000002" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({"step": state["step"], "elapsed_s": state["elapsed_s"],
                                      "world": 1, "tokens_per_step": 128}))
    message = refusal(root, "old-format", config())
    assert message == (f"cannot resume: the checkpoint in {ckpt_dir} records no training "
                       f"settings to check (written by an older version); start over by "
                       f"deleting {ckpt_dir}")


def test_refused_resumes_leave_the_run_resumable_with_the_same_schedule(root):
    """Refused attempts rebuilt the token file; an explicit warmup equal to the resolved
    default is the same schedule: the resumed run equals the uninterrupted one bit for bit."""
    copy_of_base(root, "again")
    refusal(root, "again", config(steps=8))
    refusal(root, "again", config(), data="other.txt")
    run(root, "again", config(warmup_steps=1), resume=True)
    assert losses(root / "again") == losses(root / "straight")
    wa = AutoModelForCausalLM.from_pretrained(str(root / "straight")).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(str(root / "again")).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_same_tokens_per_step_in_another_batch_layout_resumes(root):
    """Batch size, grad accumulation and ranks may change together (DCP reshards) while the
    global batch stays: the same sequences per step, the same losses up to rounding."""
    copy_of_base(root, "relayout")
    run(root, "relayout", config(batch_size=4, grad_accum=1), resume=True)
    assert losses(root / "relayout") == pytest.approx(losses(root / "straight"), rel=1e-4)


def test_tensor_data_hash_follows_the_token_ids():
    ids = torch.arange(64).reshape(4, 16)
    assert data_sha256(ids) == data_sha256(ids.clone()) == hashlib.sha256(ids.numpy()).hexdigest()
    assert data_sha256(ids) != data_sha256(ids.flip(0))
