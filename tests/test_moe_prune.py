"""Mixture-of-experts importance and prune end to end: the hooks see the model's own routing
and recompute its experts' output; REAP, frequency and expert-width scores equal a per-token
reference; minitron prune writes a stock checkpoint equal to the in-memory trim; targets and
consumers refuse what they do not support in one line."""

import copy
import json

import pytest
import torch
from tiny_models import (
    CALIB_TEXT,
    MOE_FAMILIES,
    logits,
    save_tiny_checkpoint,
    tiny_batch,
    tiny_model,
)
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from minitron_deploy.arch import get_adapter
from minitron_deploy.bench.engine import EngineWeights
from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.export.trtllm import convert
from minitron_deploy.importance.experts import ExpertCollector, routed
from minitron_deploy.pruning.scoring import ScoringSettings, score_model
from minitron_deploy.pruning.target import TargetSpec, resolve_target
from minitron_deploy.pruning.trim import KeepPlan, trim_model

CALIB_ARGS = ["--calib-samples", "8", "--seq-len", "32", "--batch-size", "4"]


def _experts_calls(model, ids):
    """Per sparse layer: (router output, experts call args, experts output) of one forward."""
    adapter, seen = get_adapter(model.config), {}
    handles = []
    for i, layer in enumerate(adapter.layers(model)):
        if adapter.is_sparse(layer):
            seen[i] = {}
            handles.append(adapter.router(layer).register_forward_hook(
                lambda m, a, out, d=seen[i]: d.update(router=out)))
            handles.append(adapter.experts(layer).register_forward_hook(
                lambda m, a, out, d=seen[i]: d.update(args=a, out=out)))
    logits(model, ids)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_hooks_see_the_models_routing_and_recompute_its_experts(family):
    model = tiny_model(family)
    adapter = get_adapter(model.config)
    seen = _experts_calls(model, tiny_batch())
    assert sorted(seen) == adapter.sparse_layers(model.config)
    for i, call in seen.items():
        _, router_weights, router_index = call["router"]
        hidden, index, weights = call["args"]
        assert torch.equal(index, router_index) and torch.equal(weights, router_weights)
        probs = F.softmax(F.linear(hidden, adapter.router(model.model.layers[i]).weight), -1)
        assert torch.equal(index, probs.topk(2, dim=-1).indices)  # routing recomputed
        rebuilt = torch.zeros_like(hidden)
        for part in routed(adapter.experts(model.model.layers[i]), hidden, index, weights):
            rebuilt.index_add_(0, part.rows, part.output * part.weights[:, None])
        torch.testing.assert_close(rebuilt, call["out"], atol=1e-6, rtol=1e-5)


def _per_token_reference(model, ids):
    """REAP, routed-token counts and mean |activation| per expert neuron, token by token."""
    adapter = get_adapter(model.config)
    out = {}
    for i, call in _experts_calls(model, ids).items():
        hidden, index, weights = call["args"]
        experts = adapter.experts(model.model.layers[i])
        n, ffn = experts.down_proj.shape[0], experts.down_proj.shape[2]
        reap, count, act = torch.zeros(n), torch.zeros(n), torch.zeros(n, ffn)
        for t in range(hidden.shape[0]):
            for k in range(index.shape[1]):
                e = int(index[t, k])
                gate, up = (experts.gate_up_proj[e] @ hidden[t]).chunk(2)
                a = F.silu(gate) * up
                reap[e] += weights[t, k] * (experts.down_proj[e] @ a).norm()
                count[e] += 1
                act[e] += a.abs()
        out[i] = (reap / count.clamp(min=1), count, act / count.clamp(min=1)[:, None])
    return out


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_expert_scores_equal_a_per_token_reference(family):
    model = tiny_model(family)
    ids = tiny_batch(batch=2, seq=6)
    reference = _per_token_reference(model, ids)
    collectors = {}
    for criterion in ("reap", "frequency", "random"):
        collector = ExpertCollector(model)
        with collector.attached(), torch.no_grad():
            model(input_ids=ids, use_cache=False)
        collectors[criterion] = collector.expert_scores(criterion, seed=3)
    widths = collector.activation_scores()
    for i, (reap, count, act) in reference.items():
        torch.testing.assert_close(collectors["reap"][f"experts.{i}"], reap)
        torch.testing.assert_close(collectors["frequency"][f"experts.{i}"], count / count.sum())
        torch.testing.assert_close(collectors["reap"][f"expert_load.{i}"], count / count.sum())
        torch.testing.assert_close(widths[f"expert_mlp.{i}"], act)
    assert not torch.equal(collectors["random"]["experts.0"], collectors["reap"]["experts.0"])


@pytest.mark.parametrize("criterion", ["activation", "magnitude", "random"])
def test_every_moe_criterion_scores_experts_and_dense_layers(criterion):
    model = tiny_model("qwen3_moe")
    scores = score_model(model, [tiny_batch(seed=s) for s in range(2)],
                         ScoringSettings(criterion=criterion), depth_block_sizes=())
    assert scores.tensors["mlp.1"].shape == (80,) and "mlp.0" not in scores.tensors
    assert scores.tensors["expert_mlp.0"].shape == (6, 24)
    assert scores.tensors["experts.3"].shape == (6,) and scores.meta["expert_criterion"] == "reap"


def test_dense_only_criteria_are_refused_in_one_line():
    with pytest.raises(MinitronError, match=r"^criterion 'mini-llm' does not score "
                                            r"mixture-of-experts models \(olmoe\); use"):
        score_model(tiny_model("olmoe"), [tiny_batch()], ScoringSettings(criterion="mini-llm"),
                    depth_block_sizes=())


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_prune_cli_writes_a_stock_checkpoint_equal_to_the_in_memory_trim(family, tmp_path,
                                                                         capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    model = save_tiny_checkpoint(family, src)
    (tmp_path / "calib.txt").write_text(CALIB_TEXT)
    heads = ["--num-heads", "4"] if family == "olmoe" else []  # OLMoE: heads x 8 = hidden
    rc = main(["prune", "--model", str(src), "--calib", str(tmp_path / "calib.txt"),
               "--out", str(out), "--num-experts", "4", "--moe-ffn-hidden-size", "16",
               "--hidden-size", "32", *heads, "--num-layers", "3", *CALIB_ARGS])
    assert rc == 0
    record = json.loads((out / "minitron" / "minitron.json").read_text())
    assert record["experts"]["target"] == {"num_experts": 4, "moe_ffn_hidden_size": 16,
                                           "num_experts_per_tok": 2}
    util = record["experts"]["utilisation"]
    assert len(util["before"]) == len(get_adapter(model.config).sparse_layers(model.config))
    for shares in (*util["before"].values(), *util["after"].values()):
        assert sum(shares) == pytest.approx(1.0)
    assert all(len(s) == 4 for s in util["after"].values())
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    in_memory = trim_model(copy.deepcopy(model.eval()), KeepPlan.from_json(record["kept"]))
    x = tiny_batch()
    assert torch.equal(logits(reloaded, x), logits(in_memory, x))
    printed = capsys.readouterr().out
    assert "expert utilisation before pruning: 6 experts" in printed
    assert "expert utilisation after pruning: 4 experts" in printed


def test_fewer_experts_than_top_k_is_stated():
    target = resolve_target(tiny_model("mixtral").config, TargetSpec(num_experts=1))
    assert target.experts.top_k == 1
    assert "experts per token (fewer experts remain) 2 -> 1" in target.reason


@pytest.mark.parametrize("family, spec, message", [
    ("llama", dict(num_experts=2), r"llama has no experts"),
    ("qwen3_moe", dict(num_experts=7), r"num_experts=7 is larger than the source \(6\)"),
    ("qwen3_moe", dict(moe_ffn_hidden_size=12), r"multiples of 8; got moe_ffn_hidden_size=12"),
    ("olmoe", dict(target_active_params=0.5), r"budget of .* active parameters cannot be met"),
    ("mixtral", dict(ffn_hidden_size=16), r"give moe_ffn_hidden_size, not ffn_hidden_size"),
    ("olmoe", dict(hidden_size=32), r"heads x head_dim \(6 x 8\) must equal hidden_size \(32\)"),
])
def test_bad_moe_targets_are_refused_in_one_line(family, spec, message):
    with pytest.raises(MinitronError, match=message) as err:
        resolve_target(tiny_model(family).config, TargetSpec(**spec))
    assert "\n" not in str(err.value)


def test_dense_only_consumers_refuse_moe_in_one_line():
    model = tiny_model("qwen3_moe")
    with pytest.raises(MinitronError, match=r"^the torch fast path does not support "
                                            r"mixture-of-experts MLPs \(qwen3_moe\)"):
        EngineWeights(model, 40)
    with pytest.raises(MinitronError, match=r"^TensorRT-LLM export does not support qwen3_moe: "
                                            r"mixture-of-experts export"):
        convert(model, "float32")


def test_modelopt_mode_takes_expert_constraints(tmp_path):
    pytest.importorskip("modelopt.torch.opt")
    import minitron_plugins.modelopt  # noqa: F401
    import modelopt.torch.opt as mto
    import modelopt.torch.prune as mtp

    def loop(model):
        model(input_ids=tiny_batch(), use_cache=False)

    model, _ = mtp.prune(tiny_model("qwen3_moe"), mode="hf_minitron",
                         constraints={"export_config": {"num_moe_experts": 4,
                                                        "moe_ffn_hidden_size": 16}},
                         dummy_input=tiny_batch(), config={"forward_loop": loop})
    assert (model.config.num_experts, model.config.moe_intermediate_size) == (4, 16)
    mto.save(model, str(tmp_path / "m.pth"))
    restored = mto.restore(tiny_model("qwen3_moe", seed=7), str(tmp_path / "m.pth"))
    assert torch.equal(logits(restored, tiny_batch()), logits(model, tiny_batch()))
