"""Mixture-of-experts budgets: total and active parameter counts, --target-params and
--target-active-params (the rule: experts, then width, then heads), the shared expert's width
and scores, and what the planner, search and the ModelOpt mode make of them."""

import json

import pytest
import torch
from tiny_models import (
    CALIB_TEXT,
    MOE_EXTRA_FAMILIES,
    MOE_FAMILIES,
    logits,
    save_tiny_checkpoint,
    tiny_batch,
    tiny_config,
    tiny_model,
)
from transformers import AutoModelForCausalLM

from minitron_deploy.arch import get_adapter
from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import param_counts
from minitron_deploy.pruning.api import prune_model
from minitron_deploy.pruning.scoring import ScoringSettings, score_model
from minitron_deploy.pruning.select import top_k
from minitron_deploy.pruning.target import TargetSpec, resolve_target

CALIB_ARGS = ["--calib-samples", "8", "--seq-len", "32", "--batch-size", "4"]


def _real_counts(model) -> tuple[int, int]:
    """Total and active parameters of a built model, from its tensors: the routed experts'
    tensors lead with the expert axis, top-k of them active."""
    total = sum(p.numel() for p in model.parameters())
    cfg = model.config
    experts = sum(p.numel() for name, m in model.named_modules() if name.endswith(".experts")
                  for p in m.parameters())
    return total, total - experts * (cfg.num_experts - cfg.num_experts_per_tok) // cfg.num_experts


@pytest.mark.parametrize("family", ["llama", *MOE_FAMILIES, *MOE_EXTRA_FAMILIES])
def test_param_counts_equal_the_model_and_a_hand_count(family):
    config = tiny_config(family)
    counts = param_counts(config)
    assert counts.total == sum(p.numel() for p in tiny_model(family).parameters())
    if family == "llama":
        assert counts.active == counts.total and counts.experts == 0
        return
    # by hand: each routed expert is a gated MLP (3 x hidden x width; gpt-oss adds its biases)
    h, e, k = config.hidden_size, config.num_experts, config.num_experts_per_tok
    width = get_adapter(config).expert_shape(config).ffn
    per_expert = 3 * h * width + (2 * width + h if family == "gpt_oss" else 0)
    sparse = len(get_adapter(config).sparse_layers(config))
    assert counts.experts == sparse * e * per_expert
    assert counts.active == counts.total - sparse * (e - k) * per_expert


@pytest.mark.parametrize("family, budget", [
    ("qwen3_moe", dict(target_params=0.8)),
    ("mixtral", dict(target_params=0.85)),
    ("olmoe", dict(target_params=0.6)),
    ("qwen2_moe", dict(target_active_params=0.75)),
    ("gpt_oss", dict(target_params=0.7, target_active_params=0.8)),
])
def test_budget_is_met_by_the_trimmed_model_which_reloads(family, budget, tmp_path):
    model = tiny_model(family)
    before = _real_counts(model)
    target = resolve_target(model.config, TargetSpec(**budget))
    scores = score_model(model, [tiny_batch(seed=s) for s in range(2)], ScoringSettings(),
                         depth_block_sizes=())
    prune_model(model, scores, target)
    total, active = _real_counts(model)
    assert (total, active) == (target.counts_after.total, target.counts_after.active)
    assert total <= budget.get("target_params", 1) * before[0]
    assert active <= budget.get("target_active_params", 1) * before[1]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert _real_counts(reloaded) == (total, active)
    assert torch.equal(logits(reloaded, tiny_batch()), logits(model, tiny_batch()))


def test_experts_go_first_for_a_total_budget_never_for_an_active_one():
    config = tiny_config("mixtral")
    total = resolve_target(config, TargetSpec(target_params=0.85))
    assert (total.experts.num_experts, total.experts.ffn, total.shape.hidden_size) == (4, 24, 48)
    assert total.reason.startswith("experts pruned first") and "experts 6 -> 4" in total.reason
    deeper = resolve_target(config, TargetSpec(target_params=0.5))
    assert deeper.experts.num_experts == 4  # the floor: half, at least 2 x top-k
    assert deeper.experts.ffn < 24 and "floor 4" in deeper.reason
    active = resolve_target(config, TargetSpec(target_active_params=0.8))
    assert active.experts.num_experts == 6 and active.experts.ffn < 24
    assert "active parameters" in active.reason


def test_a_dense_models_active_budget_is_its_total_budget():
    config = tiny_config("llama")
    assert resolve_target(config, TargetSpec(target_active_params=0.6)).shape \
        == resolve_target(config, TargetSpec(target_params=0.6)).shape


@pytest.mark.parametrize("family, spec, message", [
    ("qwen3_moe", dict(target_active_params=1e9), r"target_active_params: .* not smaller"),
    ("mixtral", dict(target_params=1000), r"budget of 1,000 total parameters cannot be met"),
    ("mixtral", dict(num_experts=2, target_params=0.03), r"cannot be met by pruning experts to 2"),
    ("qwen3_moe", dict(shared_expert_ffn_hidden_size=16), r"qwen3_moe has no shared expert"),
    ("qwen2_moe", dict(shared_expert_ffn_hidden_size=12), r"multiples of 8"),
    ("qwen2_moe", dict(shared_expert_ffn_hidden_size=40), r"larger than the source \(32\)"),
    ("llama", dict(shared_expert_ffn_hidden_size=16), r"llama has no experts"),
])
def test_impossible_moe_budgets_are_refused_in_one_line(family, spec, message):
    with pytest.raises(MinitronError, match=message) as err:
        resolve_target(tiny_config(family), TargetSpec(**spec))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("criterion", ["activation", "magnitude", "random"])
def test_the_shared_expert_is_scored_like_a_dense_mlp(criterion):
    scores = score_model(tiny_model("qwen2_moe"), [tiny_batch(seed=s) for s in range(2)],
                         ScoringSettings(criterion=criterion), depth_block_sizes=())
    for i in (0, 2, 3):  # the sparse layers; layer 1 is dense
        assert scores.tensors[f"shared_mlp.{i}"].shape == (32,)
        assert torch.isfinite(scores.tensors[f"shared_mlp.{i}"]).all()
    assert "shared_mlp.1" not in scores.tensors


def test_prune_cli_narrows_the_shared_expert_under_a_budget(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    save_tiny_checkpoint("qwen2_moe", src)
    (tmp_path / "calib.txt").write_text(CALIB_TEXT)
    assert main(["prune", "--model", str(src), "--calib", str(tmp_path / "calib.txt"),
                 "--out", str(out), "--target-params", "0.8",
                 "--shared-expert-ffn-hidden-size", "16", *CALIB_ARGS]) == 0
    record = json.loads((out / "minitron" / "minitron.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert reloaded.config.shared_expert_intermediate_size == 16
    assert record["experts"]["target"]["shared_expert_ffn_hidden_size"] == 16
    total, active = _real_counts(reloaded)
    assert (record["params_after"], record["experts"]["active_params_after"]) == (total, active)
    assert total <= 0.8 * record["params_before"] and "shared expert width 32 -> 16" \
        in record["reason"]
    from safetensors.torch import load_file

    scores = load_file(out / "minitron" / "importance.safetensors")
    for i, kept in record["kept"]["shared_mlp"].items():
        assert kept == top_k(scores[f"shared_mlp.{i}"], 16).tolist()


def test_plan_shows_total_active_and_expert_memory_and_plans_the_pruned_student(tmp_path):
    from minitron_deploy.pipeline.plan import plan_recipe
    from minitron_deploy.pipeline.recipe import load_recipe

    teacher = tmp_path / "teacher"
    config = tiny_config("mixtral")
    config.save_pretrained(teacher)
    recipe = tmp_path / "moe.yaml"
    recipe.write_text(f"name: moe\nteacher: {teacher}\ndata: data/train\nheldout: data/heldout\n"
                      "device: cpu\n"
                      "prune: {target_params: 0.5, calib_samples: 8, seq_len: 32}\n"
                      "distill: {steps: 1, seq_len: 32, batch_size: 1}\n")
    plans = plan_recipe(load_recipe(recipe), tmp_path / "work")
    prune, distill = plans[0], plans[1]
    target = resolve_target(config, TargetSpec(target_params=0.5))
    before, after = param_counts(config), target.counts_after
    assert prune.counts == after and distill.params == after.total
    assert f"active {before.active:,} -> {after.active:,}" in prune.detail
    assert f"routed experts {2 * before.experts / 2**30:.2f} -> " in prune.detail


def test_modelopt_mode_takes_an_active_params_constraint():
    pytest.importorskip("modelopt.torch.opt")
    import minitron_plugins.modelopt  # noqa: F401
    import modelopt.torch.prune as mtp

    def loop(model):
        model(input_ids=tiny_batch(), use_cache=False)

    source = _real_counts(tiny_model("mixtral"))
    model, state = mtp.prune(tiny_model("mixtral"), mode="hf_minitron",
                             constraints={"active_params": 0.8}, dummy_input=tiny_batch(),
                             config={"forward_loop": loop})
    total, active = _real_counts(model)
    assert active <= 0.8 * source[1] and model.config.num_experts == 6
    assert state["best"]["active_params"] == active and total < source[0]
