"""Exactness of trimming mixture-of-experts models (Qwen3-MoE with a dense layer, Mixtral,
OLMoE): keeping every unit is bit exact, and trimming any axis, experts and their width
included, equals the source with those units masked (tests/moe_masking.py)."""

import copy

import pytest
import torch
from masking import masked_reference
from test_trim import random_plan
from tiny_models import MOE_FAMILIES, logits, tiny_batch, tiny_model
from transformers import AutoModelForCausalLM

from minitron_deploy.arch import get_adapter
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.pruning.trim import KeepPlan, trim_model


def moe_plan(model, experts=None, expert_ffn=None, seed=0, **dense):
    """``random_plan`` plus random kept experts (``experts`` of them) and, per kept expert, its
    own random ``expert_ffn`` neurons in every sparse layer."""
    plan = random_plan(model, seed=seed, **dense)
    adapter = get_adapter(model.config)
    source = adapter.expert_shape(model.config)
    g = torch.Generator().manual_seed(seed + 1)
    pick = lambda n, k: torch.randperm(n, generator=g)[:k].sort().values  # noqa: E731
    for i in adapter.sparse_layers(model.config):
        if i in plan.layers:
            plan.experts[i] = pick(source.num_experts, experts or source.num_experts)
            plan.expert_mlp[i] = torch.stack([pick(source.ffn, expert_ffn or source.ffn)
                                              for _ in plan.experts[i]])
    return plan


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_keeping_every_unit_is_bit_exact(family):
    model = tiny_model(family)
    x = tiny_batch()
    for plan in (KeepPlan.keep_all(ModelShape.from_config(model.config)), moe_plan(model)):
        trimmed = trim_model(copy.deepcopy(model), plan)
        assert torch.equal(logits(trimmed, x), logits(model, x))


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("axis", ["experts", "expert_ffn", "hidden", "heads", "kv", "depth",
                                  "all"])
def test_trimming_equals_masking(family, axis):
    model = tiny_model(family)
    kwargs = {"experts": dict(experts=4), "expert_ffn": dict(expert_ffn=12),
              "hidden": dict(hidden=36), "heads": dict(per_group=2), "kv": dict(kv=1),
              "depth": dict(layers=[0, 2, 3]),
              "all": dict(experts=3, expert_ffn=8, hidden=32, per_group=2, ffn=40,
                          layers=[1, 2])}[axis]
    plan = moe_plan(model, **kwargs)
    x = tiny_batch()
    reference = logits(masked_reference(model, plan), x)
    trimmed = trim_model(copy.deepcopy(model), plan, rescale_norms=False)
    torch.testing.assert_close(logits(trimmed, x), reference, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in trimmed.parameters()) < sum(p.numel() for p in model.parameters())
    shape = get_adapter(trimmed.config).expert_shape(trimmed.config)
    assert (shape.num_experts, shape.ffn) == (kwargs.get("experts", 6), kwargs.get("expert_ffn", 24))


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_masking_experts_changes_the_logits(family):
    """The expert reference is not the source: the exactness tests above can fail."""
    model = tiny_model(family)
    x = tiny_batch()
    for kwargs in (dict(experts=4), dict(expert_ffn=12)):
        masked = logits(masked_reference(model, moe_plan(model, **kwargs)), x)
        assert (masked - logits(model, x)).abs().max() > 1e-3


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_trimmed_checkpoint_reloads_to_the_same_logits(family, tmp_path):
    model = tiny_model(family)
    per_group, hidden = 2, 32  # OLMoE needs heads x 8 = hidden
    plan = moe_plan(model, experts=4, expert_ffn=12, hidden=hidden, per_group=per_group,
                    layers=[0, 1, 3])
    trimmed = trim_model(copy.deepcopy(model), plan)
    trimmed.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = tiny_batch()
    assert torch.equal(logits(reloaded, x), logits(trimmed, x))
    cfg = reloaded.config
    assert (cfg.num_experts, cfg.num_experts_per_tok) == (4, 2)
    if family == "qwen3_moe":  # layer 1 (dense) is the new layer 1; 0 and 3 stay sparse
        assert cfg.mlp_only_layers == [1] and cfg.moe_intermediate_size == 12
        assert [type(layer.mlp).__name__ for layer in reloaded.model.layers] == [
            "Qwen3MoeSparseMoeBlock", "Qwen3MoeMLP", "Qwen3MoeSparseMoeBlock"]


def test_fewer_experts_than_top_k_lowers_top_k():
    model = tiny_model("mixtral")
    trimmed = trim_model(copy.deepcopy(model), moe_plan(model, experts=1))
    assert trimmed.config.num_experts_per_tok == 1
    assert torch.isfinite(logits(trimmed, tiny_batch())).all()


def test_non_uniform_experts_refused():
    model = tiny_model("mixtral")
    plan = moe_plan(model, experts=4)
    plan.experts[2] = plan.experts[2][:3]
    plan.expert_mlp[2] = plan.expert_mlp[2][:3]
    with pytest.raises(MinitronError, match="as many experts"):
        trim_model(model, plan)


def test_plan_round_trips_through_json():
    model = tiny_model("qwen3_moe")
    plan = moe_plan(model, experts=4, expert_ffn=12)
    again = KeepPlan.from_json(plan.to_json())
    assert all(torch.equal(again.expert_mlp[i], plan.expert_mlp[i]) for i in plan.expert_mlp)
    assert again.experts.keys() == plan.experts.keys() == {0, 2, 3}
