"""Distillation of a mixture-of-experts student (a tiny Qwen3-MoE pruned to fewer, narrower
experts and one layer less): it learns in one process, two DDP or FSDP2 gloo ranks equal one
process (FSDP shards each decoder layer, experts included), and the model's own router
load-balancing loss can be added."""

import json

import pytest
import torch
from test_distill_fsdp import (
    BASE,
    assert_close_weights,
    losses,
    single_process,
    torchrun,
)
from tiny_models import CALIB_TEXT, save_tiny_checkpoint, tiny_batch, tiny_model
from transformers import AutoModelForCausalLM

from minitron_deploy.arch import get_adapter
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.distill.api import DistillConfig, distill
from minitron_deploy.distill.losses import logit_kd_loss
from minitron_deploy.distill.objectives import KDObjective
from minitron_deploy.pruning.trim import KeepPlan, trim_model

VALIDATED = {"steps": 6, "val_fraction": 0.2, "val_sequences": 4}


@pytest.fixture(scope="module")
def moe_pair(tmp_path_factory):
    """``teacher`` (6 experts of width 24, layer 1 dense), ``student`` (layers 0, 1, 3; 32 of
    48 embedding channels; experts 0, 2, 3, 5 of every sparse layer, each keeping its own 16
    neurons) and ``text.txt``."""
    root = tmp_path_factory.mktemp("moe-distill")
    teacher = save_tiny_checkpoint("qwen3_moe", root / "teacher")
    plan = KeepPlan.keep_all(ModelShape.from_config(teacher.config))
    plan.layers, plan.hidden = [0, 1, 3], torch.arange(32)
    g = torch.Generator().manual_seed(0)
    for i in get_adapter(teacher.config).sparse_layers(teacher.config):
        plan.experts[i] = torch.tensor([0, 2, 3, 5])
        plan.expert_mlp[i] = torch.stack([torch.randperm(24, generator=g)[:16].sort().values
                                          for _ in range(4)])
    student = trim_model(tiny_model("qwen3_moe"), plan)
    student.save_pretrained(str(root / "student"))
    for f in (root / "teacher").glob("tokenizer*"):
        (root / "student" / f.name).write_bytes(f.read_bytes())
    (root / "text.txt").write_text(CALIB_TEXT)
    return root


@pytest.fixture(scope="module")
def single(moe_pair):
    """One process, global batch 2, with a held-out validation before and after."""
    return single_process(moe_pair, "single", **VALIDATED)


def test_moe_student_distills_and_reloads(moe_pair, single):
    out = single
    val = json.loads((out / "minitron" / "distill.json").read_text())["validation"]
    assert val["after"]["kd"] < 0.8 * val["before"]["kd"]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert (model.config.num_experts, model.config.moe_intermediate_size,
            model.config.num_hidden_layers, model.config.hidden_size) == (4, 16, 3, 32)
    before = AutoModelForCausalLM.from_pretrained(str(moe_pair / "student")).state_dict()
    after = model.state_dict()
    for name in ("model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.gate_up_proj"):
        assert not torch.equal(before[name], after[name])  # the router and experts trained


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_ranks_equal_one_process(moe_pair, single, strategy):
    out = moe_pair / strategy
    settings = {**BASE, **VALIDATED, "batch_size": 1, "strategy": strategy}
    if strategy == "fsdp":
        settings["teacher_sharding"] = "shard"
    done = torchrun(2, moe_pair, out, settings)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close_weights(single, out)
    assert losses(single) == pytest.approx(losses(out), rel=1e-5)
    summaries = [json.loads((p / "minitron" / "distill.json").read_text()) for p in (single, out)]
    assert summaries[1]["layout"]["strategy"] == strategy
    for when in ("before", "after"):
        assert summaries[1]["validation"][when]["kd"] == pytest.approx(
            summaries[0]["validation"][when]["kd"], rel=1e-4)


def test_router_aux_loss_adds_the_models_load_balancing_loss(moe_pair):
    student = AutoModelForCausalLM.from_pretrained(str(moe_pair / "student"))
    teacher = AutoModelForCausalLM.from_pretrained(str(moe_pair / "teacher"))
    ids = tiny_batch()
    parts = KDObjective(student, teacher, router_aux_weight=0.5)(ids)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, use_cache=False).logits
        s_out = student(input_ids=ids, use_cache=False, output_router_logits=True)
    kd = logit_kd_loss(s_out.logits, t_logits).total
    assert s_out.aux_loss > 1.0  # top-k (2) at a uniform load: a term of its own size
    torch.testing.assert_close(parts.total.detach(), kd + 0.5 * s_out.aux_loss)
    assert torch.equal(parts.kd, KDObjective(student, teacher)(ids).kd)
    with_aux = single_process(moe_pair, "aux", router_aux_loss_coef=0.5)
    base = losses(with_aux)
    kd_only = [json.loads(line)["kd"]
               for line in (with_aux / "minitron" / "train_log.jsonl").read_text().splitlines()]
    assert all(total > kd + 0.2 for total, kd in zip(base, kd_only))


def test_router_aux_loss_is_refused_for_a_dense_student(tmp_path):
    from tiny_models import save_distill_pair

    pair = save_distill_pair("llama", tmp_path)
    with pytest.raises(MinitronError, match=r"^router_aux_loss_coef=0.1 needs a "
                                            r"mixture-of-experts student; llama has no router$"):
        distill(pair / "teacher", pair / "student", pair / "text.txt", pair / "out",
                DistillConfig(**{**BASE, "batch_size": 2, "router_aux_loss_coef": 0.1}))
    assert not (pair / "out").exists()
