"""Qwen2-MoE (a shared expert with its own width axis, q/k/v biases) and gpt-oss (attention
sinks, biased router and experts stored transposed with gate/up interleaved, a clamped SwiGLU,
sliding layers, MXFP4 checkpoints): keeping every unit is bit exact, trimming any axis equals
the source with those units masked (tests/moe_masking.py), a trimmed checkpoint reloads to the
same logits, and the family-specific tensors are read as transformers computes them."""

import copy
import json

import pytest
import torch
from masking import masked_reference
from test_moe_trim import moe_plan
from tiny_models import (
    CALIB_TEXT,
    MOE_EXTRA_FAMILIES,
    logits,
    save_tiny_checkpoint,
    tiny_batch,
    tiny_model,
)
from transformers import AutoModelForCausalLM

from minitron_deploy.arch import get_adapter
from minitron_deploy.bench.engine import EngineWeights
from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.importance.experts import routed
from minitron_deploy.pruning.trim import KeepPlan, trim_model


def family_plan(model, shared_ffn=None, seed=0, **kwargs):
    """``moe_plan`` plus, where the family has a shared expert, ``shared_ffn`` random neurons
    of it in every kept sparse layer."""
    plan = moe_plan(model, seed=seed, **kwargs)
    if shared_ffn is not None:
        g = torch.Generator().manual_seed(seed + 2)
        width = model.config.shared_expert_intermediate_size
        for i in plan.experts:
            plan.shared_mlp[i] = torch.randperm(width, generator=g)[:shared_ffn].sort().values
    return plan


AXES = {"experts": dict(experts=4), "expert_ffn": dict(expert_ffn=12),
        "shared_ffn": dict(shared_ffn=20), "hidden": dict(hidden=36), "heads": dict(per_group=2),
        "kv": dict(kv=1), "depth": dict(layers=[0, 2, 3]),
        "all": dict(experts=3, expert_ffn=8, hidden=32, per_group=2, ffn=40, layers=[1, 2])}
CASES = [(f, a) for f in MOE_EXTRA_FAMILIES for a in AXES
         if a != "shared_ffn" or f == "qwen2_moe"]


@pytest.mark.parametrize("family", MOE_EXTRA_FAMILIES)
def test_keeping_every_unit_is_bit_exact(family):
    model = tiny_model(family)
    x = tiny_batch(seq=20)  # longer than gpt-oss's window
    for plan in (KeepPlan.keep_all(ModelShape.from_config(model.config)), family_plan(model)):
        trimmed = trim_model(copy.deepcopy(model), plan)
        assert torch.equal(logits(trimmed, x), logits(model, x))


@pytest.mark.parametrize("family, axis", CASES)
def test_trimming_equals_masking(family, axis):
    model = tiny_model(family)
    kwargs = dict(AXES[axis])
    if family == "qwen2_moe" and axis == "all":
        kwargs["shared_ffn"] = 12
    plan = family_plan(model, **kwargs)
    x = tiny_batch(seq=20)
    reference = logits(masked_reference(model, plan), x)
    trimmed = trim_model(copy.deepcopy(model), plan, rescale_norms=False)
    torch.testing.assert_close(logits(trimmed, x), reference, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in trimmed.parameters()) \
        < sum(p.numel() for p in model.parameters())
    shape = get_adapter(trimmed.config).expert_shape(trimmed.config)
    assert (shape.num_experts, shape.ffn) == (kwargs.get("experts", 6), kwargs.get("expert_ffn", 24))
    if family == "qwen2_moe":
        assert shape.shared_ffn == kwargs.get("shared_ffn", 32)


@pytest.mark.parametrize("family, kwargs", [("qwen2_moe", dict(shared_ffn=20)),
                                            ("gpt_oss", dict(experts=4)),
                                            ("gpt_oss", dict(expert_ffn=12)),
                                            ("gpt_oss", dict(hidden=36))])
def test_masking_changes_the_logits(family, kwargs):
    """The references are not the source: the exactness tests above can fail."""
    model = tiny_model(family)
    x = tiny_batch()
    masked = logits(masked_reference(model, family_plan(model, **kwargs)), x)
    assert (masked - logits(model, x)).abs().max() > 1e-3


@pytest.mark.parametrize("family", MOE_EXTRA_FAMILIES)
def test_trimmed_checkpoint_reloads_to_the_same_logits(family, tmp_path):
    model = tiny_model(family)
    shared = dict(shared_ffn=20) if family == "qwen2_moe" else {}
    plan = family_plan(model, experts=4, expert_ffn=12, hidden=32, per_group=2,
                       layers=[0, 1, 3], **shared)
    trimmed = trim_model(copy.deepcopy(model), plan)
    trimmed.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = tiny_batch(seq=20)
    assert torch.equal(logits(reloaded, x), logits(trimmed, x))
    cfg = reloaded.config
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.num_attention_heads) == (4, 2, 4)
    if family == "qwen2_moe":  # layer 1 (dense) is the new layer 1
        assert cfg.mlp_only_layers == [1] and cfg.shared_expert_intermediate_size == 20
        assert [type(layer.mlp).__name__ for layer in reloaded.model.layers] == [
            "Qwen2MoeSparseMoeBlock", "Qwen2MoeMLP", "Qwen2MoeSparseMoeBlock"]
    else:  # sliding, full, full: each kept layer keeps its attention type
        assert cfg.layer_types == ["sliding_attention", "full_attention", "full_attention"]
        assert cfg.intermediate_size == 12


def test_gpt_oss_sinks_are_sliced_with_the_query_heads():
    model = tiny_model("gpt_oss")
    plan = family_plan(model, per_group=2, kv=1)
    trimmed = trim_model(copy.deepcopy(model), plan)
    for new, old in enumerate(plan.layers):
        assert torch.equal(trimmed.model.layers[new].self_attn.sinks,
                           model.model.layers[old].self_attn.sinks[plan.heads[old]])


def test_gpt_oss_experts_read_as_transformers_computes_them():
    """Each expert, recomputed from the common layout (gate rows, then up rows; biases alike)
    with the clamped SwiGLU, gives the module's output: the interleaved gate/up columns are
    read as the even/odd ones, and the clamp is reached."""
    model = tiny_model("gpt_oss")
    layer = model.model.layers[0]
    adapter, experts = get_adapter(model.config), layer.mlp.experts
    w = adapter.get_experts(layer)
    x = torch.randn(5, 48, generator=torch.Generator().manual_seed(0))
    limit, alpha = model.config.swiglu_limit, model.config.swiglu_alpha
    for e in range(w.num_experts):
        gate, up = (x @ w.gate_up[e].T + w.gate_up_bias[e]).chunk(2, dim=-1)
        assert (gate > limit).any() and (up.abs() > limit).any()
        gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
        expected = ((up + 1) * gate * torch.sigmoid(alpha * gate)) @ w.down[e].T + w.down_bias[e]
        with torch.no_grad():
            got = experts(x, torch.full((5, 1), e), torch.ones(5, 1))
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_qwen2_moe_shared_expert_is_trimmed_on_hidden_and_its_width():
    model = tiny_model("qwen2_moe")
    plan = family_plan(model, hidden=36, shared_ffn=20)
    trimmed = trim_model(copy.deepcopy(model), plan)
    source, block = model.model.layers[0].mlp, trimmed.model.layers[0].mlp
    n, h = plan.shared_mlp[0], plan.hidden
    assert torch.equal(block.shared_expert.up_proj.weight,
                       source.shared_expert.up_proj.weight[n][:, h])
    assert torch.equal(block.shared_expert.down_proj.weight,
                       source.shared_expert.down_proj.weight[h][:, n])
    assert torch.equal(block.shared_expert_gate.weight, source.shared_expert_gate.weight[:, h])
    assert "qkv_bias" in get_adapter(model.config).features(model.config)


def test_uneven_shared_expert_widths_are_refused():
    model = tiny_model("qwen2_moe")
    plan = family_plan(model, shared_ffn=20)
    plan.shared_mlp[2] = plan.shared_mlp[2][:10]
    with pytest.raises(MinitronError, match="every shared expert must keep one width"):
        trim_model(model, plan)


def test_plan_with_a_shared_expert_round_trips_through_json():
    model = tiny_model("qwen2_moe")
    plan = family_plan(model, shared_ffn=20)
    again = KeepPlan.from_json(plan.to_json())
    assert again.shared_mlp.keys() == plan.shared_mlp.keys() == {0, 2, 3}
    assert all(torch.equal(again.shared_mlp[i], plan.shared_mlp[i]) for i in plan.shared_mlp)


def test_fast_path_refuses_gpt_oss_by_feature_in_one_line():
    with pytest.raises(MinitronError) as err:
        EngineWeights(tiny_model("gpt_oss"), 40)
    message = str(err.value)
    assert "\n" not in message
    assert all(f in message for f in ("attention sinks", "a clamped SwiGLU", "mixture-of-experts"))


def test_bench_refuses_moe_on_the_fast_path_before_anything_runs(tmp_path, monkeypatch):
    """A dense model listed first is not timed: the MoE behind it is refused up front, from
    its config alone (both folders hold a config and no weights)."""
    from minitron_deploy.bench import api
    from minitron_deploy.bench.models import ModelSpec

    dense, moe = tmp_path / "dense", tmp_path / "moe"
    tiny_model("llama").config.save_pretrained(dense)
    tiny_model("qwen3_moe").config.save_pretrained(moe)
    timed = []
    monkeypatch.setattr(api, "_bench_model", lambda *a, **k: timed.append(a) or [])
    settings = api.BenchSettings(models=[ModelSpec(str(dense)), ModelSpec(str(moe))],
                                 backends=["torch"], isl=6, osl=3, batch_sizes=(1,),
                                 device="cpu")
    with pytest.raises(MinitronError, match="mixture-of-experts") as err:
        api.benchmark(settings)
    assert "\n" not in str(err.value) and "--backend hf" in str(err.value)
    assert timed == []


@pytest.mark.parametrize("quantization, dequantized", [
    ({"quant_method": "mxfp4"}, True), ({"quant_method": "fp8"}, False), (None, False)])
def test_mxfp4_checkpoints_load_dequantized(quantization, dequantized):
    from transformers import GptOssConfig

    config = GptOssConfig(quantization_config=quantization) if quantization else GptOssConfig()
    options = get_adapter(config).load_options(config)
    assert bool(options) == dequantized
    if dequantized:
        assert options["quantization_config"].dequantize is True


@pytest.mark.parametrize("family", MOE_EXTRA_FAMILIES)
def test_importance_recomputes_each_experts_output(family):
    """The expert-importance hooks recompute each routed expert's output (gpt-oss: biases,
    interleaved gate/up, clamped SwiGLU) and the weighted sum is the module's output."""
    model = tiny_model(family)
    adapter, calls = get_adapter(model.config), []
    experts = adapter.experts(model.model.layers[0])
    handle = experts.register_forward_hook(lambda m, args, out: calls.append((args, out)))
    logits(model, tiny_batch())
    handle.remove()
    (hidden, index, weights), out = calls[0]
    rebuilt = torch.zeros_like(hidden)
    for part in routed(experts, hidden, index, weights):
        rebuilt.index_add_(0, part.rows, part.output * part.weights[:, None])
    torch.testing.assert_close(rebuilt, out, atol=1e-6, rtol=1e-5)


def test_vllm_refuses_a_qwen2_moe_whose_head_dim_is_not_hidden_over_heads():
    from minitron_deploy.serve.vllm_env import vllm_overrides

    model = tiny_model("qwen2_moe", head_dim=8)  # 6 x 8 = 48: as vLLM derives it
    assert vllm_overrides(model.config) is None
    pruned = trim_model(model, family_plan(model, hidden=40))
    with pytest.raises(MinitronError, match=r"^vLLM's Qwen2-MoE derives head_dim .* \(40 / 6\)"):
        vllm_overrides(pruned.config)


@pytest.mark.parametrize("layers, limit, message", [
    ([0, 1, 3], 7.0, "layer_types are sliding, full, full: drop layers in sliding/full pairs"),
    ([0, 1, 2], 0.1, "clamps its SwiGLU at 7, this checkpoint at 0.1")])
def test_vllm_refuses_a_gpt_oss_it_would_compute_otherwise(layers, limit, message):
    from minitron_deploy.serve.vllm_env import vllm_overrides

    model = tiny_model("gpt_oss", swiglu_limit=limit)
    keep = KeepPlan.keep_all(ModelShape.from_config(model.config))
    keep.layers = [0, 1, 2]
    assert limit != 7.0 or vllm_overrides(trim_model(copy.deepcopy(model), keep).config) is None
    keep.layers = layers
    with pytest.raises(MinitronError, match=message) as err:
        vllm_overrides(trim_model(model, keep).config)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", MOE_EXTRA_FAMILIES)
def test_prune_cli_writes_a_stock_checkpoint_equal_to_the_in_memory_trim(family, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    model = save_tiny_checkpoint(family, src)
    (tmp_path / "calib.txt").write_text(CALIB_TEXT)
    rc = main(["prune", "--model", str(src), "--calib", str(tmp_path / "calib.txt"),
               "--out", str(out), "--num-experts", "4", "--moe-ffn-hidden-size", "16",
               "--hidden-size", "32", "--num-heads", "4", "--num-layers", "3",
               "--calib-samples", "8", "--seq-len", "32", "--batch-size", "4"])
    assert rc == 0
    record = json.loads((out / "minitron" / "minitron.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), attn_implementation="eager").eval()
    in_memory = trim_model(copy.deepcopy(model.eval()), KeepPlan.from_json(record["kept"]))
    x = tiny_batch(seq=20)
    assert torch.equal(logits(reloaded, x), logits(in_memory, x))
    assert (reloaded.config.num_experts, reloaded.config.num_attention_heads) == (4, 4)
