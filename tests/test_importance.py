"""Importance scoring: hooks match direct computations and ModelOpt's definitions."""

import copy

import pytest
import torch
from tiny_models import logits, tiny_batch, tiny_model

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.importance.aggregate import BatchAccumulator, reduce_sequence
from minitron_deploy.importance.depth import (
    BlockImportanceCollector,
    layers_removed,
    loss_scores,
)
from minitron_deploy.importance.scores import ImportanceScores
from minitron_deploy.importance.width import width_importance
from minitron_deploy.pruning.scoring import forward_loop_over, score_model
from minitron_deploy.pruning.trim import KeepPlan, trim_model

BATCHES = [tiny_batch(2, 10, seed=s) for s in range(3)]


def test_default_aggregation_equals_modelopt_l2normhook():
    from modelopt.torch.prune.importance_hooks import L2NormHook

    hook, acc = L2NormHook(), BatchAccumulator("l2")
    for s in range(3):
        x = torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(s))
        hook(None, (x.transpose(0, 1),), None)  # ModelOpt expects [seq, batch, channels]
        acc.add(reduce_sequence(x, "mean"))
    assert torch.allclose(acc.result(), hook.accumulate())


@pytest.mark.parametrize("seq", ["mean", "l2", "var"])
@pytest.mark.parametrize("batch", ["l2", "mean"])
def test_aggregations_match_direct_formulas(seq, batch):
    xs = [torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    acc = BatchAccumulator(batch)
    for x in xs:
        acc.add(reduce_sequence(x, seq))
    allx = torch.cat(xs)
    per = {"mean": allx.abs().mean(1), "l2": allx.norm(dim=1), "var": allx.var(1, unbiased=False)}[seq]
    expected = per.norm(dim=0) if batch == "l2" else per.mean(0)
    assert torch.allclose(acc.result(), expected, atol=1e-6)


def _captured(model):
    """Inputs of down_proj / o_proj and norm outputs, captured by plain hooks."""
    from minitron_deploy.arch import get_adapter

    ad, got = get_adapter(model.config), {"mlp": [], "attn": [], "norm": []}
    handles = []
    for layer in ad.layers(model):
        handles.append(ad.mlp_output_proj(layer).register_forward_hook(
            lambda m, a, o: got["mlp"].append(a[0].detach())))
        handles.append(ad.attention_output_proj(layer).register_forward_hook(
            lambda m, a, o: got["attn"].append(a[0].detach())))
    for norm in ad.residual_norms(model):
        handles.append(norm.register_forward_hook(lambda m, a, o: got["norm"].append(o.detach())))
    return got, handles


@pytest.mark.parametrize("family", ["llama", "phi3", "nemotron", "qwen3"])
def test_width_scores_equal_direct_computation(family):
    model = tiny_model(family)
    scores = width_importance(model, forward_loop_over(BATCHES))
    got, handles = _captured(model)
    x = torch.cat(BATCHES)
    logits(model, x)
    for h in handles:
        h.remove()
    n_layers, head_dim = model.config.num_hidden_layers, ModelShape.from_config(model.config).head_dim
    for i in range(n_layers):
        mlp = got["mlp"][i].abs().mean(1).norm(dim=0)
        assert torch.allclose(scores[f"mlp.{i}"], mlp, rtol=1e-4)
        per_head = got["attn"][i].unflatten(-1, (-1, head_dim)).norm(dim=-1)
        assert torch.allclose(scores[f"heads.{i}"], per_head.abs().mean(1).norm(dim=0), rtol=1e-4)
    hidden = sum(o.abs().mean(1).norm(dim=0) for o in got["norm"])
    assert torch.allclose(scores["hidden"], hidden, rtol=1e-4)
    assert scores["kv_heads.0"].shape == (model.config.num_key_value_heads,)


def test_nan_activations_are_refused():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(MinitronError, match="non-finite"):
        width_importance(model, forward_loop_over(BATCHES))


def test_empty_forward_loop_is_refused():
    with pytest.raises(MinitronError, match="no data"):
        width_importance(tiny_model("llama"), lambda m: None)


def test_block_importance_equals_cosine_of_hidden_states():
    model = tiny_model("mistral")
    collector = BlockImportanceCollector(model, block_sizes=(1, 2))
    with collector.attached(), torch.no_grad():
        forward_loop_over(BATCHES)(model)
    bi = collector.scores()
    states = []
    hooks = [layer.register_forward_pre_hook(lambda m, a, k: states.append(
        (a[0] if a else k["hidden_states"]).detach()), with_kwargs=True)
        for layer in model.model.layers]
    hooks.append(model.model.layers[-1].register_forward_hook(
        lambda m, a, o: states.append(o.detach())))
    expected = {1: torch.zeros(4), 2: torch.zeros(3)}
    for b in BATCHES:
        states.clear()
        logits(model, b)
        for k in (1, 2):
            for s in range(5 - k):
                cos = torch.nn.functional.cosine_similarity(states[s], states[s + k], dim=-1)
                expected[k][s] += (1 - cos).mean() / len(BATCHES)
    for h in hooks:
        h.remove()
    for k in (1, 2):
        assert torch.allclose(bi[k], expected[k], atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_layers_removed_equals_depth_trim(family):
    model = tiny_model(family)
    x = tiny_batch()
    with layers_removed(model, [1, 2]):
        skipped = logits(model, x)
    shape = ModelShape.from_config(model.config)
    plan = KeepPlan.keep_all(shape)
    plan.layers = [0, 3]
    trimmed = trim_model(copy.deepcopy(model), plan)
    assert torch.allclose(skipped, logits(trimmed, x), atol=1e-6)
    assert len(model.model.layers) == 4  # restored


def test_loss_scores_equal_loss_without_each_layer():
    model = tiny_model("llama")
    scores = loss_scores(model, BATCHES[:2], block_size=2)
    with layers_removed(model, [1, 2]), torch.no_grad():
        direct = sum(float(model(input_ids=b, labels=b, use_cache=False).loss)
                     for b in BATCHES[:2]) / 2
    assert scores.shape == (3,)
    assert scores[1].item() == pytest.approx(direct, rel=1e-6)


def test_scores_artifact_round_trip(tmp_path):
    model = tiny_model("qwen2")
    scores = score_model(model, BATCHES, block_sizes=(1, 2))
    path = scores.save(tmp_path / "s")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = ImportanceScores.load(path)
    assert loaded.meta == scores.meta
    assert set(loaded.tensors) == set(scores.tensors)
    assert loaded.depth("loss", 2).shape == (3,) and loaded.depth("bi", 1).shape == (4,)
    for key, t in scores.tensors.items():
        assert torch.equal(loaded.tensors[key], t)


def test_corrupt_scores_file(tmp_path):
    bad = tmp_path / "s.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(MinitronError, match="cannot read"):
        ImportanceScores.load(bad)
