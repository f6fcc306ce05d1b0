"""Student search on mixtures of experts: the grid adds the experts' count and width, every
candidate's predicted total and active parameters are the exact counts of the student it
names, an active-parameter goal is met, and the chosen student is what ``minitron prune``
makes of the same experts and shape from the same scores."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (
    CALIB_TEXT,
    MOE_EXTRA_FAMILIES,
    MOE_FAMILIES,
    save_tiny_checkpoint,
    tiny_config,
)
from transformers import AutoConfig, AutoModelForCausalLM

from minitron_deploy.arch import get_adapter
from minitron_deploy.cli import main
from minitron_deploy.core.shape import ModelShape, param_counts
from minitron_deploy.core.weight_bytes import BF16, weight_tensors
from minitron_deploy.search import SearchSettings, plan_search, search_student
from minitron_deploy.search.predict import Deployment, Predictor
from minitron_deploy.search.space import Bounds, Student, enumerate_students

TINY = dict(calib_samples=8, seq_len=32, batch_size=4, heldout_seqs=4, max_depth_prune=0.5,
            rank_by="loss")


@pytest.mark.parametrize("family", MOE_FAMILIES + MOE_EXTRA_FAMILIES)
def test_every_candidate_predicts_the_exact_counts_of_its_student(family):
    config = tiny_config(family)
    src = get_adapter(config).expert_shape(config)
    plan = plan_search(config, SearchSettings(target_active_params=0.8, tolerance=0.3,
                                              max_candidates=1000, **TINY))
    low, high = plan.goal.window()
    experts = {c.experts for c in plan.candidates}
    assert {e.num_experts for e in experts} > {src.num_experts}  # experts removed in some
    assert {e.ffn for e in experts} > {src.ffn}  # and expert width pruned in others
    for c in plan.candidates:
        student = c.student.config(config)
        counts = param_counts(student)
        assert (c.prediction.params, c.prediction.active_params) == (counts.total, counts.active)
        assert c.prediction.expert_bytes == BF16.total(
            {k: n for k, n in weight_tensors(student).items() if k[0] == "expert"})
        assert low <= counts.active <= high
        assert c.experts.top_k == src.top_k <= c.experts.num_experts
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(student)  # transformers builds it


def test_grid_keeps_experts_per_token_and_kernel_multiples():
    config = tiny_config("qwen2_moe")
    students = enumerate_students(config, Bounds(max_width=0.4, max_experts=0.5),
                                  SearchSettings(target_params=0.5).align)
    src = Student(ModelShape.from_config(config), get_adapter(config).expert_shape(config))
    assert src not in students and len(set(students)) == len(students)
    assert {s.experts.num_experts for s in students} == {6, 5, 4, 3}
    for s in students:
        assert s.shape.hidden_size % 8 == 0 and s.experts.ffn % 8 == 0
        assert s.experts.shared_ffn % 8 == 0
        # the shared expert follows the experts' width
        assert (s.experts.shared_ffn == 32) == (s.experts.ffn == 24)


def test_removing_experts_costs_only_router_rows_of_active_parameters():
    config = tiny_config("qwen3_moe")  # 3 sparse layers of 4, hidden 48
    src = get_adapter(config).expert_shape(config)
    fewer = Student(ModelShape.from_config(config),
                    type(src)(num_experts=4, ffn=src.ffn, top_k=src.top_k))
    router_rows = 2 * 48 * 3
    for batch in (1, 8):
        predictor = Predictor(config, Deployment(batch=batch))
        full, cut = predictor.predict(predictor.source), predictor.predict(fewer)
        assert full.active_params - cut.active_params == router_rows
        assert cut.params < full.params and cut.memory_gib < full.memory_gib
        one_expert = cut.expert_bytes / 4
        assert full.expert_bytes == 6 * one_expert
        predictor_bytes = [predictor.decode_weight_bytes(s) for s in (predictor.source, fewer)]
        # a decode step reads the experts some token of the batch routes to (uniform routing)
        read = [(1 - (1 - 2 / n) ** batch) * n * one_expert for n in (6, 4)]
        assert predictor_bytes[0] - predictor_bytes[1] == pytest.approx(
            2 * router_rows + read[0] - read[1])
    assert read[0] - read[1] > one_expert  # at batch 8, most of six experts against four


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-search")
    # every layer sparse: a depth-pruned student then has the counts predicted whatever layers
    # the scores drop (mixed layouts are predicted by their first layers)
    save_tiny_checkpoint("qwen2_moe", root / "teacher", mlp_only_layers=[])
    (root / "calib.txt").write_text(CALIB_TEXT)
    out = root / "out"
    search_student(root / "teacher", out, SearchSettings(
        target_active_params=0.8, tolerance=0.3, max_candidates=4, **TINY),
        calib=root / "calib.txt", dtype="fp32")
    return root, out


def test_chosen_moe_student_is_minitron_prune_of_the_same_experts_and_shape(searched, tmp_path):
    root, out = searched
    report = json.loads((out / "minitron" / "search.json").read_text())
    row = next(r for r in report["candidates"] if r["chosen"])
    s = row["shape"]
    assert {r["axes"] for r in report["candidates"]} & {"experts", "width+experts",
                                                        "mixed+experts", "depth+experts"}
    config = AutoConfig.from_pretrained(out)
    assert (config.num_experts, config.moe_intermediate_size,
            config.shared_expert_intermediate_size, config.hidden_size,
            config.num_hidden_layers) == (s["num_experts"], s["moe_ffn_hidden_size"],
                                          s["shared_expert_ffn_hidden_size"], s["hidden_size"],
                                          s["num_layers"])
    model = AutoModelForCausalLM.from_pretrained(out)
    counts = param_counts(config)
    assert sum(p.numel() for p in model.parameters()) == counts.total == row["params"]
    assert counts.active == row["active_params"]
    assert "active params" in (out / "minitron" / "search.md").read_text()
    again = tmp_path / "pruned"
    assert main(["prune", "--model", str(root / "teacher"), "--scores", str(out),
                 "--hidden-size", str(s["hidden_size"]), "--num-heads", str(s["num_heads"]),
                 "--num-kv-heads", str(s["num_kv_heads"]), "--num-layers", str(s["num_layers"]),
                 "--ffn-hidden-size", str(s["ffn_hidden_size"]),
                 "--num-experts", str(s["num_experts"]),
                 "--moe-ffn-hidden-size", str(s["moe_ffn_hidden_size"]),
                 "--shared-expert-ffn-hidden-size", str(s["shared_expert_ffn_hidden_size"]),
                 "--out", str(again), "--dtype", "fp32"]) == 0
    ours, theirs = (load_file(str(d / "model.safetensors")) for d in (out, again))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_modelopt_mode_searches_moe_under_an_active_params_constraint():
    pytest.importorskip("modelopt.torch.opt")
    import minitron_plugins.modelopt  # noqa: F401
    import modelopt.torch.prune as mtp
    from tiny_models import tiny_batch, tiny_model

    def loop(model):
        for seed in range(2):
            model(input_ids=tiny_batch(seed=seed + 5), use_cache=False)

    def prefer(model):  # fewest experts, then deepest
        return -model.config.num_experts * 1000 + model.config.num_hidden_layers

    search = {"tolerance": 0.3, "max_depth_prune": 0.5, "rank_by": "loss"}
    model, _ = mtp.prune(tiny_model("qwen3_moe"), mode="hf_minitron",
                         constraints={"active_params": 0.8}, dummy_input=tiny_batch(),
                         config={"forward_loop": loop, "search": search, "score_func": prefer})
    plan = plan_search(tiny_config("qwen3_moe"),
                       SearchSettings(target_active_params=0.8, **search))
    best = max(plan.candidates, key=lambda c: (-c.experts.num_experts, c.shape.num_layers))
    assert best.experts.num_experts < 6
    assert (model.config.num_experts, model.config.moe_intermediate_size,
            ModelShape.from_config(model.config)) == (best.experts.num_experts, best.experts.ffn,
                                                      best.shape)
    assert param_counts(model.config).active == best.prediction.active_params


def test_moe_recipe_searches_distills_evaluates_and_exports(tmp_path):
    """One command on a Qwen2-MoE teacher: the search picks experts and shape under an
    active-parameter target, the student distills, is evaluated and exported to the same
    logits."""
    from tiny_models import logits, tiny_batch

    from minitron_deploy.pipeline.recipe import load_recipe
    from minitron_deploy.pipeline.run import run_pipeline

    save_tiny_checkpoint("qwen2_moe", tmp_path / "teacher", mlp_only_layers=[])
    (tmp_path / "train.txt").write_text(CALIB_TEXT)
    (tmp_path / "held.txt").write_text(CALIB_TEXT[::-1])
    recipe = tmp_path / "moe.yaml"
    recipe.write_text(f"""
name: moe
teacher: {tmp_path / 'teacher'}
data: {tmp_path / 'train.txt'}
heldout: {tmp_path / 'held.txt'}
prune: {{calib_samples: 8, seq_len: 32, batch_size: 4,
        search: {{target_active_params: 0.8, tolerance: 0.3, max_depth_prune: 0.5,
                  rank_by: loss, heldout_seqs: 4, max_candidates: 4}}}}
distill: {{steps: 2, seq_len: 32, batch_size: 4, lr: 1.0e-3}}
export: [{{format: hf, dtype: fp32}}]
eval: {{tasks: [ppl], seq_len: 32, ppl_seqs: 4}}
""")
    result = run_pipeline(load_recipe(recipe), tmp_path / "work")
    chosen = json.loads((result.pruned / "minitron" / "search.json").read_text())
    row = next(r for r in chosen["candidates"] if r["chosen"])
    student = AutoModelForCausalLM.from_pretrained(str(result.distilled)).eval()
    assert student.config.num_experts == row["shape"]["num_experts"]
    assert param_counts(student.config).active == row["active_params"]
    assert set(result.results) == {"teacher", "pruned", "distilled"}
    assert all(r["ppl"] > 1 for r in result.results.values())
    exported = AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "work" / "export" / "export-hf-fp32-tp1")).eval()
    x = tiny_batch()
    assert torch.equal(logits(exported, x), logits(student, x))
