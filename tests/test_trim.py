"""Exactness of trimming for every family: identity, and trimmed == masked source."""

import copy

import pytest
import torch
from masking import masked_reference
from tiny_models import FAMILIES, logits, tiny_batch, tiny_model

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.pruning.select import top_k
from minitron_deploy.pruning.trim import KeepPlan, trim_model


def random_plan(model, hidden=None, ffn=None, per_group=None, kv=None, layers=None, seed=0):
    """Random kept indices of the given sizes (full size where None), GQA-valid."""
    g = torch.Generator().manual_seed(seed)
    s = ModelShape.from_config(model.config)
    pick = lambda n, k: torch.randperm(n, generator=g)[:k].sort().values  # noqa: E731
    group = s.num_heads // s.num_kv_heads
    layers = layers if layers is not None else list(range(s.num_layers))
    heads, kv_heads, mlp = {}, {}, {}
    for i in layers:
        kv_heads[i] = pick(s.num_kv_heads, kv or s.num_kv_heads)
        heads[i] = torch.cat([k * group + pick(group, per_group or group) for k in kv_heads[i]])
        mlp[i] = pick(s.ffn_hidden_size, ffn or s.ffn_hidden_size)
    return KeepPlan(layers=layers, hidden=pick(s.hidden_size, hidden or s.hidden_size), mlp=mlp,
                    heads=heads, kv_heads=kv_heads)


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_every_unit_is_bit_exact(family):
    model = tiny_model(family)
    x = tiny_batch()
    expected = logits(model, x)
    trimmed = trim_model(copy.deepcopy(model), KeepPlan.keep_all(ModelShape.from_config(model.config)))
    assert torch.equal(logits(trimmed, x), expected)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("axis", ["mlp", "heads", "kv", "hidden", "depth", "all"])
def test_trimming_equals_masking(family, axis):
    model = tiny_model(family)
    kwargs = {"mlp": dict(ffn=40), "heads": dict(per_group=2), "kv": dict(kv=1),
              "hidden": dict(hidden=36), "depth": dict(layers=[0, 3]),
              "all": dict(hidden=30, ffn=24, per_group=1, layers=[1, 2])}[axis]
    plan = random_plan(model, **kwargs)
    x = tiny_batch()
    reference = logits(masked_reference(model, plan), x)
    trimmed = trim_model(copy.deepcopy(model), plan, rescale_norms=False)
    assert torch.allclose(logits(trimmed, x), reference, atol=1e-5, rtol=1e-4)
    assert trimmed.config.hidden_size == len(plan.hidden)
    assert sum(p.numel() for p in trimmed.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["llama", "llama_tied", "qwen3", "phi3", "gemma2", "gemma3",
                                    "olmo2"])
def test_rescaled_rmsnorm_equals_zeroed_channels(family):
    """With norms rescaled by sqrt(H_old/H_new), trimming equals plain zeroing (up to eps)."""
    model = tiny_model(family, rms_norm_eps=1e-30)
    plan = random_plan(model, hidden=30)
    x = tiny_batch()
    reference = logits(masked_reference(model, plan, norms_over_kept=False), x)
    trimmed = trim_model(copy.deepcopy(model), plan, rescale_norms=True)
    assert torch.allclose(logits(trimmed, x), reference, atol=1e-5, rtol=1e-4)
    # and without the rescale the two differ: the test can fail
    plain = trim_model(copy.deepcopy(model), plan, rescale_norms=False)
    assert not torch.allclose(logits(plain, x), reference, atol=1e-3)


def test_rescale_refused_for_layernorm():
    model = tiny_model("nemotron")
    with pytest.raises(MinitronError, match="RMSNorm"):
        trim_model(model, random_plan(model, hidden=30), rescale_norms=True)


def test_rescale_default_follows_norm_kind():
    x = tiny_batch()
    for family, rescaled in (("llama", True), ("nemotron", False)):
        model = tiny_model(family)
        plan = random_plan(model, hidden=30)
        default = logits(trim_model(copy.deepcopy(model), plan), x)
        explicit = logits(trim_model(copy.deepcopy(model), plan, rescale_norms=rescaled), x)
        assert torch.equal(default, explicit)


def test_tied_embeddings_stay_tied():
    model = trim_model(tiny_model("llama_tied"), random_plan(tiny_model("llama_tied"), hidden=36))
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_parameters_keep_requires_grad(family):
    model = tiny_model(family)
    model.lm_head.requires_grad_(False)
    trimmed = trim_model(model, random_plan(model, hidden=30, ffn=24, per_group=1, layers=[1, 2]))
    frozen = {n for n, p in trimmed.named_parameters() if not p.requires_grad}
    assert frozen == {"model.embed_tokens.weight" if model.config.tie_word_embeddings
                      else "lm_head.weight"}


def test_non_uniform_plan_refused():
    model = tiny_model("llama")
    plan = random_plan(model, ffn=40)
    plan.mlp[1] = plan.mlp[1][:-1]
    with pytest.raises(MinitronError, match="uniform"):
        trim_model(model, plan)


def test_heads_must_fill_kv_groups():
    model = tiny_model("llama")
    plan = random_plan(model, per_group=2)
    plan.heads[0] = torch.tensor([0, 1, 2, 3])  # all from group 0, none from group 1
    with pytest.raises(MinitronError, match="KV group"):
        trim_model(model, plan)


def test_top_k_orders_and_breaks_ties_by_index():
    scores = torch.tensor([0.5, 2.0, 0.5, 3.0, 0.5])
    assert top_k(scores, 3).tolist() == [0, 1, 3]
